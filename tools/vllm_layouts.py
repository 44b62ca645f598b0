"""Record the groups the INSTALLED vLLM's own start-up builds, for many layouts, on CPU with gloo.

This writes ``tests/fixtures/vllm-0.33.0-layouts.json``, the ground truth that
``tests/test_vllm_layout.py`` checks ``memprobe.engines.vllm.layout.plan`` against.

How it works: per layout, one process per rank (``multiprocessing``, forked after vLLM is imported) runs what
vLLM 0.33.0's ``init_worker_distributed_environment`` runs (``v1/worker/gpu_worker.py:1706-1728``):
``set_custom_all_reduce``, ``init_distributed_environment(world_size, rank, "tcp://...", local_rank,
"nccl")`` (vLLM itself falls back to gloo when NCCL is not available, ``parallel_state.py:1968-1976``),
then ``ensure_model_parallel_initialized(tp, pp, pcp, dcp)``, under ``set_current_vllm_config`` of a real
``VllmConfig(parallel_config=ParallelConfig(...))``. vLLM's code computes every rank list; this tool only
watches: ``GroupCoordinator.__init__`` is wrapped to record, in call order, ``group_name``,
``group_ranks``, ``use_device_communicator``, ``use_message_queue_broadcaster`` and ``use_all2all``
(the arguments vLLM passed) and, after the real ``__init__`` ran, whether a device communicator and an
MQ broadcaster were built (on CPU the communicator is the platform's, not ``CudaCommunicator``), and
``torch.distributed.new_group`` is wrapped to count the calls each coordinator made. After the call the
module globals (``_TP``, ``_ETP``, ``_DCP``, ``_PCP``, ``_PP``, ``_DP``, ``_EP``, ``_EPLB``) are read
back, so an alias (``_ETP = _TP``) shows as the same coordinator.

Stand-ins (each the narrowest one found; checked on vLLM 0.33.0):

* ``vllm_config.model_config`` is ``SimpleNamespace(is_moe=..., architecture="memprobe-capture",
  sleep_mode_offload_cudagraph=False)``: ``initialize_model_parallel`` reads only ``is_moe`` (EP only for
  MoE, ``parallel_state.py:2326-2327``) and ``architecture`` (Engram, off), CudaCommunicator reads
  ``sleep_mode_offload_cudagraph`` (``config/vllm.py:716-726``, ModelConfig's default False); a real
  ``ModelConfig`` needs a Hugging Face model.
* ``--enable-eplb``: ``ParallelConfig`` refuses EPLB on a platform that is not CUDA/ROCm/XPU
  (``config/parallel.py:564-568``, a platform check, not a layout one), so the configs are built with
  ``enable_eplb=False`` and the field is set to True after ``VllmConfig``'s validation; the other EPLB checks
  (``enable_expert_parallel`` set, ``TP x PCP x DP > 1``) are met by every recorded EPLB layout.
* A dense model with DP > 1: vLLM's engine core runs each DP rank as an independent engine
  (``ParallelConfig.reconfigure_for_independent_dp_rank``, called at ``v1/engine/core.py:1554``);
  the tool calls that same method and runs one replica (its ranks are the replica's local ranks).
* DP > 1 (MoE): every process gets ``data_parallel_rank`` and the same ``data_parallel_master_port``
  (vLLM's engine hands these to its workers); ``init_distributed_environment`` rebases the rank itself.

Older releases (``--release 0.11.0`` / ``--release 0.10.2``, fixtures ``vllm-<release>-layouts.json``): the same
capture against that wheel's own ``init_worker_distributed_environment`` (``v1/worker/gpu_worker.py:691-710`` of
0.11.0, ``:680-697`` of 0.10.2): ``ensure_model_parallel_initialized(tp, pp, dcp)`` (no PCP), ``GroupCoordinator``
without ``use_all2all``, no ``_ETP``/``_PCP``/``_EPLB`` globals, no ``prefill_context_parallel_size`` or
``all2all_backend`` in ``ParallelConfig`` (the backend is ``VLLM_ALL2ALL_BACKEND``, set in each rank's environment)
and no independent dense DP replicas (a dense model's DP ranks join one world, as MoE's do). Their layouts leave out
``--pcp`` (the release has none). The wheels' Python sources only, beside 0.33's dependencies::

    mkdir -p /work/extra-vrel/src-0.11.0 && unzip -q vllm-0.11.0-*.whl -x '*.so' -d /work/extra-vrel/src-0.11.0
    PYTHONPATH=/work/extra-vrel/src-0.11.0:/work/extra-vllm/site python tools/vllm_layouts.py --release 0.11.0

Regenerate (from the repository root; a few minutes on 2 cores)::

    pip download --no-deps vllm==0.33.0 -d /work/extra-vllm/dl
    mkdir -p /work/extra-vllm/src-0.33.0 && unzip -q /work/extra-vllm/dl/vllm-0.33.0-*.whl -x '*.so' -d /work/extra-vllm/src-0.33.0
    pip install --target /work/extra-vllm/site psutil regex cachetools msgspec pyzmq cloudpickle blake3 \\
        py-cpuinfo pybase64 cbor2 setproctitle urllib3 transformers aiohttp requests openai-harmony openai \\
        uvloop prometheus_client xgrammar fastapi partial_json_parser llguidance
    rm -rf /work/extra-vllm/site/{torch,torchgen,triton,nvidia,cuda}*   # xgrammar pulls a CUDA torch: the venv's must win
    PYTHONPATH=/work/extra-vllm/src-0.33.0:/work/extra-vllm/site python tools/vllm_layouts.py

With ``--cuda-communicator`` the platform's communicator class is replaced by ``CudaCommunicator`` (what
vLLM's CUDA platform returns, ``platforms/cuda.py:581-584``; ``:399-400`` of 0.11.0, ``:464-465`` of 0.10.2) and
the platform reports custom all-reduce as supported (as CUDA's does, ``platforms/cuda.py:591-592``; otherwise
``ParallelConfig`` forces ``disable_custom_all_reduce``, ``config/parallel.py:515-516`` of 0.11.0, ``:437-438`` of
0.10.2), and the decisions its ``__init__`` takes from the group's name, vLLM's flags and the environment are
recorded into ``tests/fixtures/vllm-<release>-cuda-communicator.json``, from the attributes that release keeps them
in (``CUDA_GATES``), with whether a ``PyNcclCommunicator`` was constructed and the all2all manager's class. Its
CUDA-only constructors find no GPU, no libnccl and no ``vllm._C`` here and build disabled objects. vLLM 0.10.2 keeps
no attribute for its symmetric-memory gate (``envs.VLLM_ALLREDUCE_USE_SYMM_MEM and current_platform.is_cuda()``,
``cuda_communicator.py:60``, on every group): there ``cuda_communicator.py``'s own ``current_platform`` answers
``is_cuda()`` as CUDA's does, and whether ``SymmMemCommunicator`` was constructed is recorded (its own platform check
then finds no CUDA and leaves it disabled). ``CUDA_EXTRA_RUNS`` adds, per release, a layout captured again under a
non-default environment (the env side of the gates) and, for 0.11.0, under its other all2all backend::

    PYTHONPATH=/work/extra-vrel/src-0.10.2:/work/extra-vllm/site python tools/vllm_layouts.py --release 0.10.2 --cuda-communicator

The output is deterministic (sorted keys, no timestamps, no ports).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue as queue_module
import socket
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
RELEASES = ("0.33.0", "0.11.0", "0.10.2")
NEWEST = "0.33.0"

#: Module globals of ``vllm/distributed/parallel_state.py`` that hold a coordinator, per release.
GROUP_GLOBALS = {"_WORLD": "world", "_TP": "tp", "_ETP": "etp", "_DCP": "dcp", "_PCP": "pcp", "_PP": "pp",
                 "_DP": "dp", "_EP": "ep", "_EPLB": "eplb"}
OLD_GROUP_GLOBALS = {"_WORLD": "world", "_TP": "tp", "_DCP": "dcp", "_PP": "pp", "_DP": "dp", "_EP": "ep"}


def _is_newest() -> bool:
    import vllm

    return vllm.__version__ == NEWEST


def default_out(release: str, cuda_communicator: bool = False) -> Path:
    return FIXTURES / f"vllm-{release}-{'cuda-communicator' if cuda_communicator else 'layouts'}.json"

#: (tp, pp, dp, dcp, pcp, enable_expert_parallel, enable_eplb, moe, disable_custom_all_reduce, all2all_backend)
LAYOUTS: tuple[dict, ...] = tuple(
    dict(zip(("tp", "pp", "dp", "dcp", "pcp", "enable_expert_parallel", "enable_eplb", "moe",
              "disable_custom_all_reduce", "all2all_backend"), row))
    for row in (
        (1, 1, 1, 1, 1, False, False, False, False, "allgather_reducescatter"),
        (2, 1, 1, 1, 1, False, False, False, False, "allgather_reducescatter"),
        (8, 1, 1, 1, 1, False, False, False, False, "allgather_reducescatter"),
        (8, 1, 1, 1, 1, False, False, True, False, "allgather_reducescatter"),
        (8, 1, 1, 1, 1, True, False, True, False, "allgather_reducescatter"),
        (8, 1, 1, 1, 1, True, True, True, False, "allgather_reducescatter"),
        (4, 2, 1, 1, 1, False, False, True, False, "allgather_reducescatter"),
        (4, 1, 2, 1, 1, True, False, True, False, "allgather_reducescatter"),
        (4, 1, 2, 1, 1, True, True, True, True, "allgather_reducescatter"),
        (2, 2, 2, 1, 1, True, False, True, False, "allgather_reducescatter"),
        (2, 2, 2, 1, 1, False, False, False, False, "allgather_reducescatter"),
        (4, 1, 1, 2, 1, False, False, False, False, "allgather_reducescatter"),
        (4, 1, 1, 4, 1, False, False, True, False, "allgather_reducescatter"),
        (2, 1, 1, 1, 2, False, False, False, False, "allgather_reducescatter"),
        (2, 1, 1, 1, 2, True, False, True, False, "allgather_reducescatter"),
        (2, 2, 1, 2, 2, False, False, True, False, "allgather_reducescatter"),
        (2, 1, 1, 4, 2, False, False, False, False, "allgather_reducescatter"),
        (1, 2, 4, 1, 1, True, True, True, False, "allgather_reducescatter"),
        (1, 1, 1, 1, 1, False, False, True, False, "allgather_reducescatter"),
        (2, 1, 2, 1, 1, True, False, True, False, "deepep_low_latency"),
    )
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parallel_config(layout: dict, dp_rank: int, port: int):
    """vLLM's ``ParallelConfig`` of one rank. 0.11.0 / 0.10.2 have no PCP field, take the all2all backend from
    VLLM_ALL2ALL_BACKEND (set by the rank) and run no independent dense DP replica (every DP rank joins the one world,
    ``parallel_state.py:1035-1049`` of 0.11.0)."""
    from vllm.config import ParallelConfig

    newest = _is_newest()
    fields = dict(
        tensor_parallel_size=layout["tp"],
        pipeline_parallel_size=layout["pp"],
        data_parallel_size=layout["dp"],
        data_parallel_size_local=layout["dp"],
        data_parallel_rank=dp_rank,
        decode_context_parallel_size=layout["dcp"],
        enable_expert_parallel=layout["enable_expert_parallel"],
        # see the module docstring: set after the platform check (config/parallel.py:564-568; :417-420 of 0.11.0)
        enable_eplb=False,
        disable_custom_all_reduce=layout["disable_custom_all_reduce"],
        distributed_executor_backend="mp",
        data_parallel_master_ip="127.0.0.1",
    )
    if newest:
        fields.update(prefill_context_parallel_size=layout["pcp"], all2all_backend=layout["all2all_backend"])
    config = ParallelConfig(**fields)
    config._data_parallel_master_port_list = []
    config.data_parallel_master_port = port
    if newest and layout["dp"] > 1 and not layout["moe"]:
        config.reconfigure_for_independent_dp_rank()  # as v1/engine/core.py:1554 does for a dense model
    return config


CUDA_COMMUNICATOR = "vllm.distributed.device_communicators.cuda_communicator.CudaCommunicator"

#: The attributes in which each release's CudaCommunicator keeps what it decided from the group's name, vLLM's
#: flags and the environment (``cc`` is ``device_communicators/cuda_communicator.py``, ``base`` its
#: ``base_device_communicator.py``).
CUDA_GATES: dict[str, tuple[str, ...]] = {
    # cc:57-88 (TP-only backends by the exact name "tp"), base:244-245 (use_all2all from ParallelConfig)
    "0.33.0": ("use_custom_allreduce", "use_torch_symm_mem", "use_flashinfer_allreduce", "use_all2all"),
    # cc:32-43 ("tp" in the name), base:112-122 ("ep" in the name and DP > 1); no FlashInfer all-reduce
    "0.11.0": ("use_custom_allreduce", "use_torch_symm_mem", "use_all2all"),
    # cc:26-38 ("tp" in the name; "ep" in the name: no PyNccl), base:99-109; symmetric memory: no attribute
    # (cc:60, see the module docstring), recorded as "symm_mem_comm"
    "0.10.2": ("use_custom_allreduce", "use_pynccl", "use_all2all"),
}

#: Runs --cuda-communicator adds to the layouts: tp 2 x pp 2 x dp 2, MoE with EP (every group but the world wider
#: than one) under an environment that flips the release's defaults of the env gates, and, where the release has
#: another importable backend than its default, under that all2all backend.
_EXTRA_LAYOUT = dict(tp=2, pp=2, dp=2, dcp=1, pcp=1, enable_expert_parallel=True, enable_eplb=False, moe=True,
                     disable_custom_all_reduce=False, all2all_backend="allgather_reducescatter")
CUDA_EXTRA_RUNS: dict[str, tuple[tuple[dict, dict[str, str]], ...]] = {
    # envs.py: VLLM_ALLREDUCE_USE_SYMM_MEM and VLLM_ALLREDUCE_USE_FLASHINFER default 1
    "0.33.0": ((_EXTRA_LAYOUT, {"VLLM_ALLREDUCE_USE_SYMM_MEM": "0", "VLLM_ALLREDUCE_USE_FLASHINFER": "0"}),),
    "0.11.0": ((_EXTRA_LAYOUT, {"VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}),  # envs.py:1410-1411, default 1
               (dict(_EXTRA_LAYOUT, all2all_backend="naive"), {})),  # NaiveAll2AllManager (cc:93-95)
    "0.10.2": ((_EXTRA_LAYOUT, {"VLLM_ALLREDUCE_USE_SYMM_MEM": "1"}),),  # envs.py:1220-1221, default 0
}


def _cuda_flags(communicator) -> dict | None:
    """What CudaCommunicator decided from the group's name, the flags and the env (its CUDA-only
    constructors then find no CUDA, no NCCL library and no vllm._C on this machine and build disabled objects)."""
    import vllm

    if communicator is None:
        return None
    flags = {name: bool(getattr(communicator, name)) for name in CUDA_GATES[vllm.__version__]}
    flags["pynccl_comm"] = communicator.pynccl_comm is not None
    if vllm.__version__ == "0.10.2":
        flags["symm_mem_comm"] = communicator.symm_mem_comm is not None
    flags["all2all_manager"] = type(communicator.all2all_manager).__name__ if communicator.all2all_manager else None
    return flags


class _CudaPlatformAnswer:
    """vLLM 0.10.2's ``cuda_communicator.current_platform``, answering ``is_cuda()`` as the CUDA platform does so that
    the symmetric-memory gate (cc:60) runs; everything else is the platform's own."""

    def __init__(self, platform) -> None:
        self._platform = platform

    def is_cuda(self) -> bool:
        return True

    def __getattr__(self, name: str):
        return getattr(self._platform, name)


def _rank_main(layout: dict, launch_rank: int, rank: int, dp_rank: int, port: int, queue,
               cuda_communicator: bool = False, env: dict[str, str] | None = None) -> None:
    try:
        os.environ.update(env or {})  # vLLM's envs.py reads the environment at each access
        if cuda_communicator:
            # stand-in: the platform answers the two questions as CUDA's does: its communicator class is
            # CudaCommunicator (platforms/cuda.py:581-584) and custom all-reduce is supported (cuda.py:591-592;
            # otherwise ParallelConfig forces disable_custom_all_reduce, config/parallel.py:1167-1172)
            from vllm.platforms import current_platform

            platform = type(current_platform)
            platform.get_device_communicator_cls = classmethod(lambda cls: CUDA_COMMUNICATOR)
            platform.use_custom_allreduce = classmethod(lambda cls: True)
            import vllm

            if vllm.__version__ == "0.10.2":
                from vllm.distributed.device_communicators import cuda_communicator as cc

                cc.current_platform = _CudaPlatformAnswer(current_platform)
        queue.put((launch_rank, _capture_rank(layout, rank, dp_rank, port)))
    except BaseException:  # noqa: BLE001 - the parent reports the child's traceback
        queue.put((launch_rank, {"error": traceback.format_exc()}))


def _capture_rank(layout: dict, local_rank: int, dp_rank: int, port: int) -> dict:
    import torch.distributed as dist

    newest = _is_newest()
    if not newest and layout["all2all_backend"] != "allgather_reducescatter":
        # 0.11.0 / 0.10.2 read the backend from the environment (envs.py); the layout's default leaves the
        # release's own default (0.10.2's is "naive", envs.py:1059-1060)
        os.environ["VLLM_ALL2ALL_BACKEND"] = layout["all2all_backend"]

    import vllm.distributed.parallel_state as ps
    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config

    parallel = _parallel_config(layout, dp_rank, port)
    # device "cpu": on a machine without a GPU the CUDA wheel's platform is UnspecifiedPlatform, whose
    # device type is empty and DeviceConfig("auto") refuses it (config/device.py:49-59)
    extra = {}
    if not newest:
        # CacheConfig's host swap check (4 GiB per TP rank must fit in 70 % of this machine's memory,
        # config/cache.py:206-218 of 0.11.0) is about the machine, not the layout: no swap space here
        from vllm.config import CacheConfig

        extra["cache_config"] = CacheConfig(swap_space=0)
    vllm_config = VllmConfig(parallel_config=parallel, device_config=DeviceConfig(device="cpu"), **extra)
    # after VllmConfig's validation too: it validates the parallel config again (the platform check)
    vllm_config.parallel_config.enable_eplb = layout["enable_eplb"]
    parallel = vllm_config.parallel_config
    vllm_config.model_config = SimpleNamespace(is_moe=layout["moe"], architecture="memprobe-capture",
                                                sleep_mode_offload_cudagraph=False)

    calls: list[dict] = []
    new_group_calls = [0]
    real_init = ps.GroupCoordinator.__init__
    real_new_group = dist.new_group

    def counting_new_group(*args, **kwargs):
        new_group_calls[0] += 1
        return real_new_group(*args, **kwargs)

    def recording_init(self, group_ranks, local_rank, torch_distributed_backend, use_device_communicator,
                       use_message_queue_broadcaster=False, group_name=None, use_all2all=False):
        before = new_group_calls[0]
        if newest:
            real_init(self, group_ranks, local_rank, torch_distributed_backend, use_device_communicator,
                      use_message_queue_broadcaster, group_name, use_all2all)
        else:  # no use_all2all argument before vLLM 0.33 (parallel_state.py:200-208 of 0.11.0)
            real_init(self, group_ranks, local_rank, torch_distributed_backend, use_device_communicator,
                      use_message_queue_broadcaster, group_name)
        self._memprobe_call = len(calls)
        calls.append({
            "group_name": group_name,
            "unique_name": self.unique_name,
            "group_ranks": [list(map(int, ranks)) for ranks in group_ranks],
            "use_device_communicator": bool(use_device_communicator),
            "use_message_queue_broadcaster": bool(use_message_queue_broadcaster),
            "use_all2all": bool(use_all2all),
            "new_group_calls": new_group_calls[0] - before,
            "my_ranks": list(map(int, self.ranks)),
            "device_communicator": type(self.device_communicator).__name__ if self.device_communicator else None,
            "mq_broadcaster": self.mq_broadcaster is not None,
            "cuda_flags": _cuda_flags(self.device_communicator) if type(self.device_communicator).__name__
            == "CudaCommunicator" else None,
        })
        if not newest:  # before 0.33 the communicator decides all2all itself: "ep" in its name and DP > 1
            # (base_device_communicator.py:112-122 of 0.11.0), on the platform's communicator too
            calls[-1]["communicator_use_all2all"] = (bool(self.device_communicator.use_all2all)
                                                     if self.device_communicator is not None else None)

    ps.GroupCoordinator.__init__ = recording_init
    dist.new_group = counting_new_group
    replica_world = parallel.world_size
    try:
        with set_current_vllm_config(vllm_config):
            # v1/worker/gpu_worker.py:1706-1728 (init_worker_distributed_environment), in that order
            ps.set_custom_all_reduce(not parallel.disable_custom_all_reduce)
            ps.init_distributed_environment(replica_world, local_rank, f"tcp://127.0.0.1:{port}", local_rank, "nccl")
            if newest:
                ps.ensure_model_parallel_initialized(parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
                                                     parallel.prefill_context_parallel_size,
                                                     parallel.decode_context_parallel_size)
            else:  # gpu_worker.py:705-708 of 0.11.0
                ps.ensure_model_parallel_initialized(parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
                                                     parallel.decode_context_parallel_size)
        globals_ = {}
        for name, label in (GROUP_GLOBALS if newest else OLD_GROUP_GLOBALS).items():
            coordinator = getattr(ps, name)
            globals_[label] = None if coordinator is None else coordinator._memprobe_call
        result = {"calls": calls, "globals": globals_, "global_rank": dist.get_rank(),
                  "world_size": dist.get_world_size(), "backend": str(dist.get_backend()),
                  "use_all2all": bool(parallel.use_all2all) if newest else None, "platform": type(ps.current_platform).__name__
                  if hasattr(ps, "current_platform") else _platform_name()}
    finally:
        ps.GroupCoordinator.__init__ = real_init
        dist.new_group = real_new_group
    ps.destroy_model_parallel()
    ps.destroy_distributed_environment()
    return result


def _platform_name() -> str:
    from vllm.platforms import current_platform

    return type(current_platform).__name__


def capture(layout: dict, cuda_communicator: bool = False, env: dict[str, str] | None = None) -> dict:
    """Run one layout: every rank a process; returns what vLLM built, checked consistent across ranks."""
    replica = layout["tp"] * layout["pp"] * layout["pcp"]
    # a dense DP replica is its own engine in 0.33; before it every DP rank joins one world
    ranks = replica * (layout["dp"] if layout["moe"] or not _is_newest() else 1)
    port = _free_port()
    # fork after the parent imported vLLM (main): each rank starts from the same imported modules and
    # no group state (vLLM's globals are set only inside the children); spawn would re-import vLLM per rank
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = []
    for rank in range(ranks):
        dp_rank, local = divmod(rank, replica)
        process = context.Process(target=_rank_main,
                                  args=(layout, rank, local, dp_rank, port, queue, cuda_communicator, env))
        process.start()
        processes.append(process)
    try:
        results = dict(queue.get(timeout=300) for _ in processes)
    except queue_module.Empty:
        results = {}
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():  # a rank stuck in a gloo rendezvous whose peer failed
            process.kill()
            process.join()
    errors = {rank: r["error"] for rank, r in results.items() if "error" in r}
    if errors or len(results) != len(processes):
        raise CaptureFailed(f"layout {layout}: {len(results)}/{len(processes)} ranks answered; failed:\n"
                            + "\n".join(errors.values()))
    merged = _merge(layout, results)
    return {**merged, "env": dict(sorted(env.items()))} if env else merged


class CaptureFailed(RuntimeError):
    """A layout's ranks did not all answer (on a loaded 2-core machine gloo's connectFullMesh can fail)."""


def capture_with_retries(layout: dict, cuda_communicator: bool, env: dict[str, str] | None = None,
                         attempts: int = 3) -> dict:
    for attempt in range(1, attempts + 1):
        try:
            return capture(layout, cuda_communicator, env)
        except CaptureFailed as failure:
            if attempt == attempts:
                raise SystemExit(str(failure)) from None
            print(f"attempt {attempt} failed, retrying: {str(failure).splitlines()[0]}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _merge(layout: dict, results: dict[int, dict]) -> dict:
    by_global = {r["global_rank"]: r for r in results.values()}
    first = by_global[0]
    for rank, result in by_global.items():
        for call, mine in zip(first["calls"], result["calls"]):
            mine_only = ("my_ranks", "device_communicator", "mq_broadcaster", "communicator_use_all2all")
            same = {key: call[key] for key in call if key not in mine_only}
            theirs = {key: mine[key] for key in mine if key not in mine_only}
            if same != theirs:
                raise SystemExit(f"rank {rank} saw {theirs}, rank 0 saw {same}")
        if result["globals"] != first["globals"] or len(result["calls"]) != len(first["calls"]):
            raise SystemExit(f"rank {rank} built a different set of groups than rank 0")
    groups = []
    for index, call in enumerate(first["calls"]):
        groups.append({
            **{key: call[key] for key in ("group_name", "unique_name", "group_ranks", "use_device_communicator",
                                          "use_message_queue_broadcaster", "use_all2all", "new_group_calls")},
            "built_device_communicator": {str(g): by_global[g]["calls"][index]["device_communicator"]
                                          for g in sorted(by_global)},
            "built_mq_broadcaster": {str(g): by_global[g]["calls"][index]["mq_broadcaster"] for g in sorted(by_global)},
            **({"cuda_flags": call["cuda_flags"]} if call["cuda_flags"] is not None else {}),
            **({"communicator_use_all2all": {str(g): by_global[g]["calls"][index]["communicator_use_all2all"]
                                             for g in sorted(by_global)}} if "communicator_use_all2all" in call else {}),
        })
    return {"layout": layout, "world_size": first["world_size"], "backend": first["backend"],
            "platform": first["platform"], "use_all2all": first["use_all2all"], "groups": groups,
            "globals": first["globals"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cuda-communicator", action="store_true",
                        help="build CudaCommunicator in place of the platform's (its name and flag gates run on "
                             "CPU); writes the -cuda-communicator fixture; skips the layouts whose all2all backend "
                             "needs a package this machine lacks (DeepEP)")
    parser.add_argument("--only", type=int, default=None, help="capture only the layout at this index (a trial)")
    parser.add_argument("--release", choices=RELEASES, default=NEWEST,
                        help="the vLLM release on PYTHONPATH (its fixture: vllm-<release>-layouts.json)")
    args = parser.parse_args(argv)
    import torch
    import vllm
    import vllm.config  # noqa: F401 - imported once here, before the ranks fork
    import vllm.distributed.parallel_state  # noqa: F401

    if vllm.__version__ != args.release:
        raise SystemExit(f"vLLM {vllm.__version__} is on the path; --release {args.release} asks for that one")
    # releases before 0.33 have no prefill context parallelism (no prefill_context_parallel_size field)
    known = LAYOUTS if args.release == NEWEST else tuple(layout for layout in LAYOUTS if layout["pcp"] == 1)
    layouts = known if args.only is None else (known[args.only],)
    runs: tuple[tuple[dict, dict[str, str]], ...] = tuple((layout, {}) for layout in layouts)
    if args.cuda_communicator:
        runs = tuple(run for run in runs if run[0]["all2all_backend"] == "allgather_reducescatter")
        runs += CUDA_EXTRA_RUNS[args.release] if args.only is None else ()
    out = args.out or default_out(args.release, args.cuda_communicator)
    source = f"/work/extra-vllm/src-{NEWEST}" if args.release == NEWEST else f"/work/extra-vrel/src-{args.release}"
    captured = []
    for layout, env in runs:
        print(f"capturing {layout} {env or ''}", file=sys.stderr, flush=True)
        captured.append(capture_with_retries(layout, args.cuda_communicator, env))
    document = {
        "provenance": {
            "tool": "tools/vllm_layouts.py",
            "command": f"PYTHONPATH={source}:/work/extra-vllm/site python tools/vllm_layouts.py"
                       + (" --cuda-communicator" if args.cuda_communicator else "")
                       + (f" --release {args.release}" if args.release != NEWEST else ""),
            "communicator": ("CudaCommunicator in place of the platform's (platforms/cuda.py:581-584); no CUDA, "
                             "no libnccl, no vllm._C here, so only its name/flag/env gates are meaningful"
                             if args.cuda_communicator else "the platform's own"),
            "vllm": vllm.__version__,
            "vllm_wheel": (f"vllm-{NEWEST}-cp38-abi3-manylinux_2_28_x86_64.whl" if args.release == NEWEST else
                           f"vllm-{args.release}-cp38-abi3-manylinux1_x86_64.whl") + " (Python sources only; no vllm._C)",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": "cpu (gloo); vLLM's platform on this machine: see each layout's 'platform'",
            "stand_ins": ["model_config = SimpleNamespace(is_moe, architecture, sleep_mode_offload_cudagraph=False)",
                          "enable_eplb set after ParallelConfig's CUDA-only platform check",
                          ("dense DP > 1: one replica after reconfigure_for_independent_dp_rank()"
                           if args.release == NEWEST else "dense DP > 1: every DP rank in the one world, as MoE"),
                          "DeviceConfig(device='cpu')"]
            + ([] if args.release == NEWEST else ["VLLM_ALL2ALL_BACKEND set per rank when not the layout default",
                                                  "CacheConfig(swap_space=0): the host swap check is the machine's"])
            + (["platform: get_device_communicator_cls -> CudaCommunicator, use_custom_allreduce -> True"]
               if args.cuda_communicator else [])
            + (["cuda_communicator.py's current_platform.is_cuda() -> True (its symmetric-memory gate, cc:60)"]
               if args.cuda_communicator and args.release == "0.10.2" else []),
        },
        "layouts": captured,
    }
    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    if args.only is None:
        out.write_text(text)
        print(f"wrote {out} ({len(captured)} layouts)", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    sys.exit(main())

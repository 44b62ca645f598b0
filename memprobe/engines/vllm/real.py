"""``--engine vllm``: the vLLM on the workers' path runs its own ``init_distributed_environment`` and
``ensure_model_parallel_initialized``, as vLLM 0.33.0's ``init_worker_distributed_environment`` calls them
(``v1/worker/gpu_worker.py:1706-1728``), with memprobe's samples around every group it builds (worker side).

What is wrapped (patched on the classes and modules vLLM looks them up on, restored afterwards):

* ``parallel_state.GroupCoordinator.__init__``: ``before`` is sampled on entry; after it, the group's decisions
  (the arguments ``initialize_model_parallel`` passed, and what the coordinator built) are recorded;
* ``CudaCommunicator.__init__``: ``groups_created`` is sampled on entry (vLLM has made its ``new_group`` pairs);
  its name/flag/env gates (``use_custom_allreduce``, ``use_torch_symm_mem``, ``use_flashinfer_allreduce``,
  ``use_all2all``) are read after it;
* the communicator classes ``CudaCommunicator.__init__`` imports lazily from their modules (``PyNcclCommunicator``,
  ``SymmMemCommunicator``, ``FlashInferAllReduce``, ``CustomAllreduce``): each step is sampled right after the
  constructor; a step vLLM did not take for a group is sampled too and marked ``skipped``.

On ``--device cpu`` (gloo) the platform vLLM finds is not CUDA, so it would build its CPU communicator; memprobe
makes it answer the two questions CUDA's platform answers (its communicator class is ``CudaCommunicator``,
``platforms/cuda.py:581-584``; custom all-reduce is supported, ``platforms/cuda.py:591-592``) so that vLLM's own
``CudaCommunicator`` takes its decisions. Its constructors then find no GPU and no NCCL library (memprobe points
``VLLM_NCCL_SO_PATH`` nowhere) and build nothing: the decisions it takes only on CUDA (``symm_mem`` behind
``current_platform.is_cuda()``, cc:127; custom all-reduce's P2P/NVLink/world-size checks, car:186-284; FlashInfer's
size table, flashinfer_all_reduce.py:394-450, of 0.33.0) are read from that release's code by the estimate's rules
(:mod:`memprobe.engines.vllm.communicators`), and said so in each decision's reason.

The stand-ins for the configuration (checked on vLLM 0.33.0; a real ``ModelConfig`` needs a Hugging Face model):
``model_config`` is a namespace of the three fields the group code reads (``is_moe``: EP only for MoE,
``parallel_state.py:2326-2327``; ``architecture``; ``sleep_mode_offload_cudagraph``, cc via config/vllm.py:716-726);
``enable_eplb`` is set after ``ParallelConfig``'s platform check (config/parallel.py:564-568 refuses EPLB on a
platform that is not CUDA/ROCm/XPU); ``distributed_executor_backend`` is ``external_launcher`` (vLLM's torchrun
mode: the ranks and the rendezvous are the launcher's, config/parallel.py:970-1006, parallel_state.py:1858-1866).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from types import SimpleNamespace
from typing import Any, Iterator

from memprobe.engines.api import Decision, GroupPlan, Verdict
from memprobe.engines.builder import GroupBuilder, GroupSteps
from memprobe.engines.vllm import communicators as rules
from memprobe.measure.rendezvous import INIT_METHOD
from memprobe.model.records import StepStatus
from memprobe.model.steps import GROUPS_CREATED, WORLD

CUDA_COMMUNICATOR = "vllm.distributed.device_communicators.cuda_communicator.CudaCommunicator"
#: kind -> (module under vllm.distributed.device_communicators, class CudaCommunicator constructs, its attribute)
CONSTRUCTED: dict[str, tuple[str, str, str]] = {
    rules.PYNCCL: ("pynccl", "PyNcclCommunicator", "pynccl_comm"),
    rules.SYMM_MEM: ("symm_mem", "SymmMemCommunicator", "symm_mem_comm"),
    rules.FLASHINFER_ALLREDUCE: ("flashinfer_all_reduce", "FlashInferAllReduce", "fi_ar_comm"),
    rules.CUSTOM_ALLREDUCE: ("custom_all_reduce", "CustomAllreduce", "ca_comm"),
}
#: kind -> CudaCommunicator's gate attribute (cc:57-83, base_device_communicator.py:244-245 of 0.33.0)
GATES: dict[str, str] = {
    rules.SYMM_MEM: "use_torch_symm_mem", rules.FLASHINFER_ALLREDUCE: "use_flashinfer_allreduce",
    rules.CUSTOM_ALLREDUCE: "use_custom_allreduce", rules.CUSTOM_ALLREDUCE_MNNVL: "use_custom_allreduce",
    rules.ALL2ALL_MANAGER: "use_all2all",
}
#: the keys of vLLM's own decisions in run.json's ``communicators[group]`` (beside the kinds' words)
PREFIX = "vllm:"
NO_DEVICE_REASON = "--device cpu has no GPU communicators"
NOT_ASKED = "vLLM's code does not ask for it on this group"


def _bound(function: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = inspect.signature(function).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def gate_decisions(communicator: Any) -> dict[str, str]:
    """What CudaCommunicator decided from the group's name, vLLM's flags and the environment."""
    if communicator is None:
        return {}
    found = {PREFIX + attribute: str(bool(getattr(communicator, attribute, False)))
             for attribute in dict.fromkeys(GATES.values())}
    manager = getattr(communicator, "all2all_manager", None)
    found[PREFIX + "all2all_manager"] = type(manager).__name__ if manager is not None else "none"
    return found


class GroupHooks(GroupSteps):
    """Wrappers around vLLM's coordinator and communicator constructors that sample each step of each group."""

    skipped_note = "not built by vLLM"

    def __init__(self, recorder: Any, version: str) -> None:
        super().__init__(recorder)
        self.version = version
        self.kinds = recorder.engine.engine.kind_names
        self.on_cpu = recorder.device_kind == "cpu"
        self.constructed: dict[str, Any] = {}
        self.communicator: Any = None
        self.built: list[GroupPlan] = []

    # ------------------------------------------------------------------ sampling
    def _sample_constructed(self, kind: str, constructed: Any) -> None:
        self.done.add(kind)
        self.constructed[kind] = constructed
        if self.on_cpu or constructed is None or getattr(constructed, "disabled", False):
            why = NO_DEVICE_REASON if self.on_cpu else "constructed, disabled by vLLM's own checks"
            self.recorder.record(kind, self.group, status=StepStatus.SKIPPED, note=f"{why} (vLLM constructed it)")
        else:
            self.recorder.record(kind, self.group, note=f"vLLM {self.version}")

    # ------------------------------------------------------------------ wrappers
    def coordinator_wrapper(self, original: Any) -> Any:
        @functools.wraps(original)
        def init(coordinator: Any, *args: Any, **kwargs: Any) -> None:
            passed = _bound(original, args, kwargs)
            name = passed.get("group_name") or "anonymous"
            if name == WORLD:  # init_distributed_environment's: the world step is the recorder's
                return original(coordinator, *args, **kwargs)
            recorder = self.recorder
            self.group, self.done, self.constructed, self.communicator = name, set(), {}, None
            recorder.record("before", name)
            recorder.current = (name, GROUPS_CREATED)
            original(coordinator, *args, **kwargs)
            self.emit_until(rules.MQ_BROADCASTER)
            self._mq_step(coordinator)
            recorder.device_groups[name], recorder.cpu_groups[name] = coordinator.device_group, coordinator.cpu_group
            recorder.info.communicators[name] = self.decisions(coordinator, passed)
            self.built.append(GroupPlan(name, tuple(tuple(int(r) for r in ranks) for ranks in passed["group_ranks"])))
            self.group = None

        return init

    def _mq_step(self, coordinator: Any) -> None:
        self.done.add(rules.MQ_BROADCASTER)
        built = getattr(coordinator, "mq_broadcaster", None) is not None
        self.recorder.record(rules.MQ_BROADCASTER, self.group, status=StepStatus.OK if built else StepStatus.SKIPPED,
                             note="host shared-memory ring" if built else "not built by vLLM")

    def communicator_wrapper(self, original: Any) -> Any:
        @functools.wraps(original)
        def init(communicator: Any, *args: Any, **kwargs: Any) -> None:
            self.emit_until(rules.PYNCCL)  # groups_created: vLLM made its new_group pairs
            self.communicator = communicator
            original(communicator, *args, **kwargs)
            self.emit_until(rules.MQ_BROADCASTER)  # the all2all manager and what was not constructed

        return init

    def constructor_wrapper(self, kind: str, original: Any) -> Any:
        def construct(*args: Any, **kwargs: Any) -> Any:
            self.emit_until(kind)
            self.recorder.current = (self.group, kind)
            constructed = original(*args, **kwargs)
            self._sample_constructed(kind, constructed)
            return constructed

        return construct

    # ------------------------------------------------------------------ what vLLM decided
    def decisions(self, coordinator: Any, passed: dict[str, Any]) -> dict[str, str]:
        """Per kind the word run.json keeps (:meth:`Decision.text`), then vLLM's own decisions (``vllm:`` keys)."""
        communicator = getattr(coordinator, "device_communicator", None)
        width = int(getattr(coordinator, "world_size", 1))
        pynccl = self.constructed.get(rules.PYNCCL)
        own = {
            PREFIX + "group_ranks": json.dumps([[int(r) for r in ranks] for ranks in passed["group_ranks"]],
                                               separators=(",", ":")),
            PREFIX + "use_device_communicator": str(bool(passed.get("use_device_communicator"))),
            PREFIX + "use_message_queue_broadcaster": str(bool(passed.get("use_message_queue_broadcaster"))),
            PREFIX + "passed_use_all2all": str(bool(passed.get("use_all2all"))),
            PREFIX + "device_communicator": type(communicator).__name__ if communicator is not None else "none",
            PREFIX + "pynccl": "not constructed" if rules.PYNCCL not in self.constructed else
            "constructed" + (" (disabled)" if getattr(pynccl, "disabled", False) else ""),
            PREFIX + "mq_broadcaster": "built" if getattr(coordinator, "mq_broadcaster", None) is not None else "none",
            **gate_decisions(communicator),
        }
        words = {kind: self._decision(kind, width, communicator, coordinator).text() for kind in self.kinds}
        return {**{kind: word for kind, word in words.items() if word}, **own}

    def _asked(self, kind: str, communicator: Any, coordinator: Any) -> bool:
        if kind == rules.PYNCCL:
            return kind in self.constructed
        if kind == rules.MQ_BROADCASTER:
            return getattr(coordinator, "mq_broadcaster", None) is not None
        return communicator is not None and bool(getattr(communicator, GATES[kind], False))

    def _decision(self, kind: str, width: int, communicator: Any, coordinator: Any) -> Decision:
        group = str(self.group)
        if width == 1:
            return Decision(group, kind, Verdict.WIDTH_1, reason=self.recorder.engine.engine.width_1_reason)
        if not self._asked(kind, communicator, coordinator):
            return Decision(group, kind, Verdict.OFF, reason=NOT_ASKED)
        if kind == rules.MQ_BROADCASTER:
            return Decision(group, kind, Verdict.BUILT, implementation=f"vLLM {self.version}")
        if self.on_cpu:
            return Decision(group, kind, Verdict.NO_DEVICE, reason=f"{NO_DEVICE_REASON}; vLLM's code asked for it")
        live = self._live(kind, communicator)
        if live:
            return Decision(group, kind, Verdict.BUILT, implementation=f"vLLM {self.version}")
        return Decision(group, kind, Verdict.NOT_ELIGIBLE, reason="vLLM's own checks left it unbuilt on this machine")

    def _live(self, kind: str, communicator: Any) -> bool:
        if kind == rules.ALL2ALL_MANAGER:
            return getattr(communicator, "all2all_manager", None) is not None
        if kind == rules.CUSTOM_ALLREDUCE_MNNVL:  # kept with a multicast pointer only (car:357-367, 394 of 0.33.0)
            custom = self.constructed.get(rules.CUSTOM_ALLREDUCE)
            return getattr(custom, "mnnvl_buffer", None) is not None and bool(getattr(custom, "mnnvl_multicast_ptr", 0))
        constructed = self.constructed.get(kind)
        return constructed is not None and not getattr(constructed, "disabled", False)

    # ------------------------------------------------------------------ patching
    @contextlib.contextmanager
    def installed(self) -> Iterator["GroupHooks"]:
        import importlib

        from vllm.distributed import parallel_state as ps
        from vllm.distributed.device_communicators import cuda_communicator

        patches: list[tuple[Any, str, Any]] = [
            (ps.GroupCoordinator, "__init__", self.coordinator_wrapper(ps.GroupCoordinator.__init__)),
            (cuda_communicator.CudaCommunicator, "__init__",
             self.communicator_wrapper(cuda_communicator.CudaCommunicator.__init__)),
        ]
        for kind, (module_name, attribute, _) in CONSTRUCTED.items():
            module = importlib.import_module(f"vllm.distributed.device_communicators.{module_name}")
            patches.append((module, attribute, self.constructor_wrapper(kind, getattr(module, attribute))))
        originals = [(owner, attribute, owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute))
                     for owner, attribute, _ in patches]
        for owner, attribute, wrapper in patches:
            setattr(owner, attribute, wrapper)
        try:
            yield self
        finally:
            for owner, attribute, original in originals:
                setattr(owner, attribute, original)


def answer_as_cuda(platform: Any) -> None:
    """--device cpu: vLLM's platform answers as CUDA's does for the two questions the group code asks (see the
    module's docstring); nothing else of the platform changes."""
    cls = type(platform)
    cls.get_device_communicator_cls = classmethod(lambda _: CUDA_COMMUNICATOR)
    cls.use_custom_allreduce = classmethod(lambda _: True)


@contextlib.contextmanager
def _rank_variable(rank: int) -> Iterator[None]:
    """``external_launcher`` reads the DP rank from ``RANK`` (config/parallel.py:1000-1006): this scenario's rank."""
    before = os.environ.get("RANK")
    os.environ["RANK"] = str(rank)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RANK", None)
        else:
            os.environ["RANK"] = before


def vllm_config(layout: Any, rank: int, device: str) -> Any:
    """A real VllmConfig of the layout (vLLM validates it), with the stand-ins the module docstring lists."""
    from vllm.config import DeviceConfig, ParallelConfig, VllmConfig

    with _rank_variable(rank):
        parallel = ParallelConfig(
            tensor_parallel_size=layout.tp, pipeline_parallel_size=layout.pp, data_parallel_size=layout.dp,
            decode_context_parallel_size=layout.dcp, prefill_context_parallel_size=layout.pcp,
            enable_expert_parallel=layout.enable_expert_parallel, enable_eplb=False,
            disable_custom_all_reduce=layout.disable_custom_all_reduce, all2all_backend=layout.all2all_backend,
            distributed_executor_backend="external_launcher")
        config = VllmConfig(parallel_config=parallel, device_config=DeviceConfig(device=device))
    config.parallel_config.enable_eplb = layout.enable_eplb  # after the platform check (config/parallel.py:564-568)
    config.model_config = SimpleNamespace(is_moe=layout.moe, architecture="memprobe", sleep_mode_offload_cudagraph=False)
    return config


def plan_difference(plan: Any, built: list[GroupPlan]) -> str | None:
    """One line where vLLM built other groups (names, order or rank lists) than memprobe's plan of the layout, which
    the reports lay the readings out by; None where they are the same."""
    planned = [(group.name, group.rank_lists) for group in plan.built_groups() if group.name != WORLD]
    actual = [(group.name, group.rank_lists) for group in built]
    if planned == actual:
        return None
    first = next((f"{p[0]} {list(map(list, p[1]))} vs vLLM's {a[0]} {list(map(list, a[1]))}"
                  for p, a in zip(planned, actual) if p != a), f"{len(planned)} groups planned, vLLM built {len(actual)}")
    return f"the installed vLLM built other groups than memprobe's plan of this layout (first difference: {first})"


class VLLMInstalledBuilder(GroupBuilder):
    """The installed vLLM builds its world and groups itself, with :class:`GroupHooks` around them."""

    init_method = INIT_METHOD  # the scenario's keys in torchrun's store (memprobe.measure.rendezvous)

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self.parallel_state: Any = None
        on_cpu = recorder.device_kind == "cpu"
        if on_cpu:  # what a CPU runner with `pip install --no-deps vllm` lacks
            from memprobe.engines.vllm import standins

            standins.install()
            # no NCCL on CPU: PyNcclCommunicator disables itself when the library does not load (pynccl.py:130-136)
            os.environ["VLLM_NCCL_SO_PATH"] = "/nonexistent/libnccl.so.2"
        # import vLLM before the first reading, so that its import cost (host memory only) is not charged to a step
        import vllm
        import vllm.config  # noqa: F401
        from vllm.distributed import parallel_state  # noqa: F401
        from vllm.distributed.device_communicators import cuda_communicator  # noqa: F401

        self.version = str(getattr(vllm, "__version__", "?"))
        if on_cpu:
            from vllm.platforms import current_platform

            answer_as_cuda(current_platform)
            if (note := standins.note()) is not None:
                recorder.info.warnings.append(note)

    def world_and_groups(self) -> list[GroupPlan]:
        from vllm.config import set_current_vllm_config
        from vllm.distributed import parallel_state as ps

        recorder = self.recorder
        layout = recorder.layout
        config = vllm_config(layout, recorder.rank, "cpu" if recorder.device_kind == "cpu" else "cuda")
        parallel = config.parallel_config
        with GroupHooks(recorder, self.version).installed() as hooks, set_current_vllm_config(config):
            # v1/worker/gpu_worker.py:1706-1728 (init_worker_distributed_environment), in that order
            ps.set_custom_all_reduce(not parallel.disable_custom_all_reduce)
            recorder.current = (WORLD, WORLD)
            ps.init_distributed_environment(recorder.world_size, recorder.rank, self.init_method, recorder.local_rank,
                                            recorder.backend, timeout=recorder.timeout)
            world = ps.get_world_group()
            recorder.device_groups[WORLD], recorder.cpu_groups[WORLD] = world.device_group, world.cpu_group
            recorder.world_cpu_group = world.cpu_group
            recorder._record_nccl_library()
            recorder.record(WORLD, WORLD)
            ps.ensure_model_parallel_initialized(parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
                                                 parallel.prefill_context_parallel_size,
                                                 parallel.decode_context_parallel_size)
        self.parallel_state = ps
        if (difference := plan_difference(recorder.plan, hooks.built)) is not None:
            recorder.info.warnings.append(difference)
        return hooks.built

    def destroy(self) -> None:
        ps = self.parallel_state
        try:
            if ps is not None:
                ps.destroy_model_parallel()
        except Exception:  # teardown problems must not hide the readings, which are already written
            pass

"""The worker template every engine's start-up runs in: a memory sample after every step (worker side; imports torch).

Per rank, in the order :mod:`memprobe.model.steps` defines:

1. ``start`` (before CUDA), ``cuda_context`` (``set_device`` + first tensor);
2. the engine's builder (:class:`memprobe.engines.builder.GroupBuilder`): ``world``, then per group in the
   engine's order ``before``, ``groups_created`` and one step per communicator kind of the engine;
3. ``first_use`` per group: the first collective on the group's torch NCCL group (lazy
   communicators allocate only then), per ``--warmup``; then ``end``;
4. gathering on rank 0 and teardown.

Every sample is taken after ``torch.cuda.synchronize()`` and a barrier on the world's gloo
group, so every rank is at the same step. The recorder knows no engine's groups or communicators.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist

from memprobe.engines.api import EngineRef, GroupPlan, LayoutBase
from memprobe.engines.stacks import Stack
from memprobe.measure.rendezvous import INIT_METHOD, nccl_host
from memprobe.model.events import Arrived, ReadingTaken, WorkerEvent
from memprobe.model.records import CONCURRENT_VARIABLE, RankInfo, Reading, StepStatus, process_carries
from memprobe.model.steps import CUDA_CONTEXT, END, FIRST_USE, START, WORLD

SWEEP_ALL_REDUCE_ELEMENTS = (1, 1024, 256 * 1024, 16 * 1024 * 1024)  # fp32: 4 B .. 64 MiB
SWEEP_ALL_GATHER_ELEMENTS = 256 * 1024  # 1 MiB per rank




class FaultHook:
    """Test-only fault injection, off unless ``MEMPROBE_TEST_FAULT`` is set.

    Format ``RANK:GROUP/STEP:ACTION`` (``GROUP`` empty for start/cuda_context/end/teardown), e.g.
    ``1:tp/pynccl:raise``, several separated by commas; ACTION is ``raise``, ``exit`` (exit code 7),
    ``kill`` (SIGKILL to itself), ``hang`` (sleeps forever) or ``sleepN`` (sleeps N seconds, then goes on:
    a slow but healthy rank). It fires when the rank reaches that step, before the step's reading is taken.
    """

    def __init__(self, spec: str | None, rank: int) -> None:
        self.targets: dict[tuple[str, str], str] = {}
        for item in (spec or "").split(","):
            if item:
                rank_text, where, action = item.split(":")
                group, _, step = where.rpartition("/")
                if int(rank_text) == rank:
                    self.targets[(group, step)] = action

    def fire(self, group: str, step: str) -> None:
        action = self.targets.get((group, step))
        if action is None:
            return
        if action == "raise":
            raise RuntimeError(f"injected fault at {group}/{step} (MEMPROBE_TEST_FAULT)")
        if action == "exit":
            os._exit(7)
        if action == "kill":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if action.startswith("sleep"):
            time.sleep(float(action[len("sleep"):]))
        if action == "hang":
            while True:
                time.sleep(3600)


class Recorder:
    """One rank's measurement: sampling, barriers, the event stream, first use, gathering and teardown; the
    engine's builder (``engine.engine.builders[engine.mode]``) builds the world, the groups and the communicators."""

    def __init__(self, *, engine: EngineRef, layout: LayoutBase, stack: Stack, device: str, warmup: str,
                 timeout_s: float, emit: Callable[[WorkerEvent], None], rank: int, local_rank: int, world_size: int,
                 allow_busy_gpu: bool = False) -> None:
        self.engine = engine
        self.layout = layout
        self.plan = engine.engine.plan_for(layout, stack)
        self.stack = stack
        self.device_kind = device
        self.warmup = warmup
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.emit = emit
        self.rank = rank
        self.local_rank = local_rank
        self.world_size = world_size
        self.allow_busy_gpu = allow_busy_gpu
        self.fault = FaultHook(os.environ.get("MEMPROBE_TEST_FAULT"), rank)
        self.readings: list[Reading] = []
        self.sequence = 0
        self.last_time = time.monotonic()
        self.current = ("", "start")
        self.world_cpu_group: Any = None
        self.device_groups: dict[str, Any] = {}
        self.cpu_groups: dict[str, Any] = {}
        self.info = RankInfo(rank=rank, local_rank=local_rank, host=nccl_host(), pid=os.getpid(),
                             device="cpu" if device == "cpu" else f"cuda:{local_rank}",
                             torch_version=torch.__version__, cuda_version=str(torch.version.cuda or ""))
        self.sampler: Any = None
        self.torch_device: torch.device | None = None
        self.builder = _builder_class(engine)(self)

    # ----------------------------------------------------------------- sampling
    def _synchronize(self) -> None:
        if self.torch_device is not None:
            torch.cuda.synchronize(self.torch_device)
        if self.world_cpu_group is not None:
            dist.barrier(group=self.world_cpu_group)

    def record(self, step: str, group: str = "", status: str = StepStatus.OK, note: str = "") -> Reading:
        self.current = (group, step)
        self.fault.fire(group, step)
        # this rank finished the step and now waits for the others: the parent tells a hung rank
        # from the ranks waiting for it
        self.emit(Arrived(group=group, step=step))
        self._synchronize()
        sample = self.sampler.sample()
        now = time.monotonic()
        reading = Reading(
            rank=self.rank, sequence=self.sequence, step=step, group=group, status=status,
            primary_bytes=self.sampler.primary(sample), process_bytes=sample.process_bytes,
            device_used_bytes=sample.device_used_bytes, torch_reserved_bytes=sample.torch_reserved_bytes,
            other_gpus_bytes=sample.other_gpus_bytes, elapsed_s=round(now - self.last_time, 6), note=note,
        )
        self.last_time = now
        self._keep(reading)
        return reading

    def _keep(self, reading: Reading) -> None:
        """Number, keep and stream one reading (it reaches disk before the next step starts)."""
        self.sequence += 1
        self.readings.append(reading)
        self.emit(ReadingTaken(reading))

    # ----------------------------------------------------------------- steps
    def _start_and_context(self) -> None:
        from memprobe.measure.sampling import GpuSampler, HostSampler

        if self.device_kind == "cpu":
            self.sampler = HostSampler()
            self.info.sampling_mode = self.sampler.mode
            self.record(START)
            self.current = ("", CUDA_CONTEXT)
            self.record(CUDA_CONTEXT, status=StepStatus.SKIPPED, note="--device cpu: no CUDA context")
            return
        from memprobe.measure import nvml

        visible = nvml.visible_gpus()
        if not nvml.is_available(visible) or self.local_rank >= len(visible):
            raise RuntimeError(f"cannot map local rank {self.local_rank} to a GPU through NVML: {getattr(visible, 'reason', visible)}")
        gpu = visible[self.local_rank]
        self.sampler = GpuSampler(os.getpid(), gpu.uuid, torch_reserved=self._torch_reserved)
        self.info.gpu_uuid, self.info.gpu_name = gpu.uuid, gpu.name
        others = self.sampler.other_processes()
        concurrent = os.environ.get(CONCURRENT_VARIABLE, "")
        if concurrent:  # sibling scenarios of `compare --jobs` share the GPUs on purpose
            others = {pid: used for pid, used in others.items() if not process_carries(pid, CONCURRENT_VARIABLE, concurrent)}
        if others:
            message = f"GPU {gpu.uuid} is shared with other processes (pids {sorted(others)})"
            self.info.warnings.append(message)
        start_sample = self.sampler.sample()
        start_time = self.last_time
        # Only now touch CUDA: the rank's own device, never cuda:0 by accident (pytorch#86849).
        self.current = ("", "cuda_context")
        self.fault.fire("", "start")
        torch.cuda.set_device(self.local_rank)
        self.torch_device = torch.device("cuda", self.local_rank)
        torch.zeros(1, device=self.torch_device)
        torch_uuid = "GPU-" + str(torch.cuda.get_device_properties(self.torch_device).uuid)
        if torch_uuid != gpu.uuid:
            raise RuntimeError(f"CUDA device {self.local_rank} is {torch_uuid} but NVML order gave {gpu.uuid}; "
                               "set CUDA_DEVICE_ORDER=PCI_BUS_ID")
        mode = self.sampler.decide_mode()
        self.info.sampling_mode = mode
        self.info.warnings.extend(self.sampler.warnings)
        if mode == "device" and concurrent:
            raise RuntimeError("per-process NVML figures are unavailable here, so scenarios cannot share GPUs; "
                               "rerun with --jobs 1")
        if mode == "device" and others and not self.allow_busy_gpu:
            raise RuntimeError(f"device-level sampling on a busy GPU ({self.info.warnings[0]}); pass --allow-busy-gpu to measure anyway")
        # The start reading is emitted now that the mode is known. Not being listed by NVML
        # before the CUDA context exists means 0 bytes in per-process mode.
        start_bytes = start_sample.process_bytes if start_sample.process_bytes is not None else (0 if mode == "process" else None)
        primary = start_bytes if mode == "process" else start_sample.device_used_bytes
        reading = Reading(rank=self.rank, sequence=self.sequence, step="start", group="", status=StepStatus.OK,
                          primary_bytes=primary, process_bytes=start_bytes,
                          device_used_bytes=start_sample.device_used_bytes, torch_reserved_bytes=0,
                          other_gpus_bytes=start_sample.other_gpus_bytes, elapsed_s=0.0,
                          note="" if start_sample.process_bytes is not None else "no CUDA context yet")
        self._keep(reading)
        self.last_time = start_time
        self.record(CUDA_CONTEXT)

    def _torch_reserved(self) -> int | None:
        if self.torch_device is None:
            return 0
        return int(torch.cuda.memory_reserved(self.torch_device))

    def _record_nccl_library(self) -> None:
        if self.device_kind != "cpu":
            from memprobe.measure.cuda_libs import nccl_library

            library = nccl_library()
            self.info.nccl_version = library.version()
            self.info.nccl_library = library.path

    def _first_use(self, group: GroupPlan) -> None:
        ranks = group.ranks_of(self.rank)
        if self.warmup == "none":
            self.record(FIRST_USE, group.name, status=StepStatus.SKIPPED, note="--warmup none")
            return
        if len(ranks) == 1:  # engines return before any collective on a width-1 group (SGLang PS:692)
            self.record(FIRST_USE, group.name, status=StepStatus.SKIPPED, note="width 1: no collective")
            return
        self.current = (group.name, FIRST_USE)
        device = self.torch_device or torch.device("cpu")
        device_group = self.device_groups[group.name]
        sizes = (1,) if self.warmup == "tiny" else SWEEP_ALL_REDUCE_ELEMENTS
        for elements in sizes:
            tensor = torch.ones(elements, dtype=torch.float32, device=device)
            dist.all_reduce(tensor, group=device_group)
            del tensor
        if self.warmup == "sweep":
            source = torch.ones(SWEEP_ALL_GATHER_ELEMENTS, dtype=torch.float32, device=device)
            gathered = [torch.empty_like(source) for _ in ranks]
            dist.all_gather(gathered, source, group=device_group)
            del source, gathered
        if self.torch_device is not None:
            torch.cuda.synchronize(self.torch_device)
            torch.cuda.empty_cache()  # measure communicators, not cached collective tensors
        note = "all_reduce 1 x fp32" if self.warmup == "tiny" else "sweep: all_reduce 4 B..64 MiB, all_gather 1 MiB/rank"
        self.record(FIRST_USE, group.name, note=note)

    @property
    def backend(self) -> str:
        """torch's backend for the groups' device side: gloo stands in for NCCL on ``--device cpu``."""
        return "gloo" if self.device_kind == "cpu" else "nccl"

    def run(self) -> list[Reading]:
        self._start_and_context()
        built = self.builder.world_and_groups()
        for group in [self.plan.group(WORLD), *built]:
            self._first_use(group)
        self.record(END)
        return self.readings

    def gather(self) -> tuple[list[Reading], list[RankInfo]] | None:
        """Rank 0 gathers every rank's readings and info over the world's gloo group."""
        payload = (self.readings, self.info)
        gathered: list[Any] = [None] * self.world_size if self.rank == 0 else None  # type: ignore[assignment]
        dist.gather_object(payload, gathered, dst=0, group=self.world_cpu_group)
        if self.rank != 0:
            return None
        readings = [reading for item in gathered for reading in item[0]]
        infos = [item[1] for item in gathered]
        return readings, infos

    def shutdown(self) -> None:
        try:
            self.builder.destroy()
        finally:
            self._teardown()

    def _teardown(self) -> None:
        if dist.is_initialized():
            try:
                dist.barrier(group=self.world_cpu_group)
            except Exception:
                pass
            self.fault.fire("", "teardown")  # tests: a rank slower than its peers to tear down
            dist.destroy_process_group()


def _builder_class(engine: EngineRef) -> type:
    """The engine's builder for its mode, imported here in the rank (torch and the engine's own code live there)."""
    import importlib

    module, _, attribute = engine.engine.builders[engine.mode].partition(":")
    return getattr(importlib.import_module(module), attribute)


def format_exception(error: BaseException, limit: int = 12) -> list[str]:
    lines = "".join(traceback.format_exception(type(error), error, error.__traceback__)).splitlines()
    return lines[-limit:]

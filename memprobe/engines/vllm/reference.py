"""``--engine vllm-ref``: vLLM's ``init_distributed_environment`` + ``initialize_model_parallel``, rebuilt (worker
side; imports torch). The groups are :class:`memprobe.engines.builder.GroupBuilder`'s (``new_group`` NCCL + gloo
for every rank list, width-1 lists included, in vLLM's order); here what each group's ``CudaCommunicator`` and
``GroupCoordinator`` add, with the sizes :meth:`memprobe.engines.vllm.VLLMEngine.sizes` gives:

* ``pynccl``: :class:`memprobe.measure.cuda_libs.PyNccl` (eager init and a one-element all-reduce warm-up, as
  vLLM's ``PyNcclCommunicator.__init__``);
* ``custom_allreduce``: vLLM's ``CustomAllreduce`` buffers: ``meta`` and ``buffer`` raw ``cudaMalloc`` + CUDA IPC
  (``create_shared_buffer``), ``rank_data`` a torch tensor;
* ``symm_mem`` and the MNNVL stage: torch symmetric memory of the decided size, rendezvoused on the group;
* ``mq_broadcaster``: the host shared-memory ring, created by the group's first rank and mapped by the others;
* FlashInfer all-reduce and the all2all manager allocate nothing at init (their buffers come at first use).

No kernels are compiled or run: memory is what is measured.
"""

from __future__ import annotations

from dataclasses import replace
from multiprocessing import shared_memory
from typing import Any

import torch
import torch.distributed as dist

from memprobe.engines.api import Decision, Facts, GroupPlan
from memprobe.engines.builder import CommunicatorFailed, GroupBuilder, gather_objects
from memprobe.engines.vllm import communicators as rules
from memprobe.measure.cuda_libs import CudaRuntime, PyNccl


class VLLMReferenceBuilder(GroupBuilder):
    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self.pynccl: list[PyNccl] = []
        self.tensors: list[Any] = []
        self.symmetric: list[Any] = []
        self.raw_pointers: list[int] = []
        self.peer_pointers: list[int] = []
        self.rings: list[tuple[shared_memory.SharedMemory, bool]] = []
        self.cuda_runtime: CudaRuntime | None = None

    def build_communicator(self, group: GroupPlan, ranks: tuple[int, ...], decision: Decision, facts: Facts) -> Decision:
        recorder = self.recorder
        cpu_group = recorder.cpu_groups[group.name]
        if decision.kind == rules.PYNCCL:
            self.pynccl.append(PyNccl(cpu_group, ranks, recorder.torch_device))
            return decision
        allocations = self.engine.sizes(decision, facts)
        planned = sum(a.nbytes for a in allocations)
        try:
            if decision.kind == rules.MQ_BROADCASTER:
                self._ring(cpu_group, ranks, planned)
            for allocation in allocations:
                if allocation.pool == "raw":
                    self._shared_buffer(cpu_group, ranks, allocation.nbytes)
                elif allocation.pool == "cumem":
                    self._symmetric(cpu_group, allocation.nbytes)
                elif allocation.pool == "torch_cache":
                    self.tensors.append(torch.empty(allocation.nbytes, dtype=torch.uint8, device=recorder.torch_device))
            if recorder.torch_device is not None and allocations:
                torch.cuda.synchronize(recorder.torch_device)
            dist.barrier(group=cpu_group)
        except Exception as error:  # vLLM logs a failed custom all-reduce or symmetric memory and goes on
            raise CommunicatorFailed(str(error)) from error
        return replace(decision, planned_bytes=planned)

    def _shared_buffer(self, cpu_group: Any, ranks: tuple[int, ...], nbytes: int) -> None:
        """``CustomAllreduce.create_shared_buffer``: cudaMalloc, then every peer's pointer opened by IPC."""
        runtime = self.cuda_runtime = self.cuda_runtime or CudaRuntime()
        pointer = runtime.malloc(nbytes)
        self.raw_pointers.append(pointer)
        mine = ranks.index(dist.get_rank())
        for index, raw in enumerate(gather_objects(cpu_group, runtime.ipc_handle(pointer), len(ranks))):
            if index != mine:
                self.peer_pointers.append(runtime.ipc_open(raw))

    def _symmetric(self, cpu_group: Any, nbytes: int) -> None:
        import torch.distributed._symmetric_memory as symmetric_memory

        buffer = symmetric_memory.empty(nbytes, dtype=torch.uint8, device=self.recorder.torch_device)
        self.symmetric.append((buffer, symmetric_memory.rendezvous(buffer, cpu_group.group_name)))

    def _ring(self, cpu_group: Any, ranks: tuple[int, ...], nbytes: int) -> None:
        """The writer (the list's first rank) creates the ring; the readers map it by name."""
        writer = dist.get_rank() == ranks[0]
        ring = shared_memory.SharedMemory(create=True, size=nbytes) if writer else None
        names = gather_objects(cpu_group, ring.name if ring else None, len(ranks))
        if ring is None:
            ring = shared_memory.SharedMemory(name=names[0])
        self.rings.append((ring, writer))

    def destroy(self) -> None:
        for communicator in self.pynccl:
            communicator.destroy()
        if self.cuda_runtime is not None:
            for pointer in self.peer_pointers:
                self.cuda_runtime.ipc_close(pointer)
            for pointer in self.raw_pointers:
                self.cuda_runtime.free(pointer)
        for ring, writer in self.rings:
            ring.close()
            if writer:
                ring.unlink()
        for built in (self.pynccl, self.tensors, self.symmetric, self.rings, self.raw_pointers, self.peer_pointers):
            built.clear()

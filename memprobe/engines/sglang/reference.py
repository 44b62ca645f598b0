"""``--engine sglang-ref``: SGLang 0.5.23's ``init_distributed_environment`` + ``initialize_model_parallel``, rebuilt
(worker side; imports torch). The groups are :class:`memprobe.engines.builder.GroupBuilder`'s; here the two
communicators SGLang adds on top of torch's groups:

* ``pynccl``: :class:`memprobe.measure.cuda_libs.PyNccl` (SGLang ``device_communicators/pynccl.py``);
* ``custom_allreduce``: the buffers SGLang's custom all-reduce allocates (v2 symmetric workspace through torch
  symmetric memory plus its graph table, or the v1 raw cudaMalloc + CUDA IPC layout). No kernels are compiled
  or run: memory is what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist

from memprobe.engines.api import Decision, Facts, GroupPlan
from memprobe.engines.builder import CommunicatorFailed, GroupBuilder, gather_objects
from memprobe.engines.sglang.communicators import PYNCCL
from memprobe.engines.sglang.sizes import V1Buffers, v2_workspace
from memprobe.measure.cuda_libs import CudaRuntime, PyNccl


class ReferenceBuilder(GroupBuilder):
    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self.pynccl: dict[str, PyNccl] = {}
        self.custom_allreduce: dict[str, CustomAllReduce] = {}
        self.cuda_runtime: CudaRuntime | None = None

    def build_communicator(self, group: GroupPlan, ranks: tuple[int, ...], decision: Decision, facts: Facts) -> Decision:
        recorder = self.recorder
        cpu_group = recorder.cpu_groups[group.name]
        if decision.kind == PYNCCL.name:
            self.pynccl[group.name] = PyNccl(cpu_group, ranks, recorder.torch_device)
            return decision
        try:
            built, runtime = allocate_custom_allreduce(cpu_group, ranks, recorder.torch_device, str(decision.implementation))
        except Exception as error:  # SGLang catches and only logs custom all-reduce failures (PS:502-518)
            raise CommunicatorFailed(str(error)) from error
        self.custom_allreduce[group.name] = built
        self.cuda_runtime = runtime or self.cuda_runtime
        return replace(decision, planned_bytes=built.planned_bytes)

    def destroy(self) -> None:
        for communicator in self.pynccl.values():
            communicator.destroy()
        for buffers in self.custom_allreduce.values():
            buffers.destroy(self.cuda_runtime)
        self.pynccl.clear()
        self.custom_allreduce.clear()



@dataclass
class CustomAllReduce:
    implementation: str  # "v2" or "v1"
    planned_bytes: int
    tensors: list[Any] = field(default_factory=list)
    raw_pointers: list[int] = field(default_factory=list)
    peer_pointers: list[int] = field(default_factory=list)
    symmetric_memory: Any = None

    def destroy(self, runtime: CudaRuntime | None) -> None:
        if runtime is not None:
            for pointer in self.peer_pointers:
                runtime.ipc_close(pointer)
            for pointer in self.raw_pointers:
                runtime.free(pointer)
        self.tensors.clear()
        self.symmetric_memory = None


def allocate_custom_allreduce(cpu_group: Any, ranks: tuple[int, ...], device: torch.device, implementation: str,
                              runtime_factory: Any = CudaRuntime) -> tuple[CustomAllReduce, CudaRuntime | None]:
    size = len(ranks)
    group_rank = ranks.index(dist.get_rank())
    if implementation == "v2":
        from torch._C._distributed_c10d import _SymmetricMemory

        properties = torch.cuda.get_device_properties(device)
        plan = v2_workspace(size, properties.major, properties.minor, properties.multi_processor_count)
        if torch.__version__ < "2.11.0":  # as SGLang: older torch needs symmetric memory enabled per group
            import torch.distributed._symmetric_memory as symmetric_memory

            symmetric_memory.enable_symm_mem_for_group(cpu_group.group_name)
        graph_params = torch.zeros((plan.graph_params_bytes // (8 * size), size), dtype=torch.uint64, device=device)
        slab = _SymmetricMemory.empty_strided_p2p((plan.symmetric_bytes,), [1], torch.uint8, device, cpu_group.group_name)
        handle = _SymmetricMemory.rendezvous(slab)
        slab.zero_()
        torch.cuda.synchronize(device)
        dist.barrier(group=cpu_group)
        counter = torch.zeros((plan.push_counter_bytes // 4,), dtype=torch.uint32, device=device)
        dist.barrier(group=cpu_group)
        return CustomAllReduce("v2", plan.total_bytes, tensors=[graph_params, slab, counter], symmetric_memory=handle), None
    runtime = runtime_factory()
    sizes = V1Buffers()
    result = CustomAllReduce("v1", sizes.meta_bytes + sizes.buffer_bytes + sizes.rank_data_bytes)
    for nbytes in (sizes.meta_bytes, sizes.buffer_bytes):
        pointer = runtime.malloc(nbytes)
        result.raw_pointers.append(pointer)
        handles = gather_objects(cpu_group, runtime.ipc_handle(pointer), size)
        for index, raw in enumerate(handles):
            if index != group_rank:
                result.peer_pointers.append(runtime.ipc_open(raw))
    result.tensors.append(torch.empty(sizes.rank_data_bytes, dtype=torch.uint8, device=device))
    torch.cuda.synchronize(device)
    dist.barrier(group=cpu_group)
    return result, runtime

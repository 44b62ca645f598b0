"""The communicators SGLang adds on top of torch's groups, rebuilt for measurement (worker side only).

* :class:`PyNccl`: a second NCCL communicator for a group, through ctypes on the NCCL library
  torch loaded (SGLang ``device_communicators/pynccl.py``): unique id from the group's first
  rank, broadcast over the gloo group, ``ncclCommInitRank``, then a 1-element fp32
  all-reduce on a side stream as warm-up.
* :func:`allocate_custom_allreduce`: the buffers SGLang's custom all-reduce allocates (v2
  symmetric workspace through torch symmetric memory plus its graph table, or the v1 raw
  cudaMalloc + CUDA IPC layout). No kernels are compiled or run: memory is what is measured.

This module imports torch and is only imported inside workers.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from memprobe.measure import nvml
from memprobe.measure.rendezvous import nccl_host
from memprobe.measure.custom_allreduce_sizes import V1_WORLD_SIZES, V1Buffers, v2_supported_world_sizes, v2_workspace


def loaded_library_path(fragment: str) -> str | None:
    """Path of a shared library already mapped into this process (``/proc/self/maps``)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                parts = line.split()
                if len(parts) >= 6 and fragment in parts[-1].rsplit("/", 1)[-1]:
                    return parts[-1]
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------ NCCL

class NcclUniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_byte * 128)]


NCCL_FLOAT32 = 7
NCCL_SUM = 0


class NcclLibrary:
    """The NCCL library torch loaded (so pynccl and torch's groups use the same version)."""

    def __init__(self) -> None:
        torch.cuda.nccl.version()  # makes sure torch has loaded NCCL
        self.path = loaded_library_path("libnccl") or "libnccl.so.2"
        self.lib = ctypes.CDLL(self.path)
        self.lib.ncclGetErrorString.restype = ctypes.c_char_p
        self.lib.ncclCommInitRank.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, NcclUniqueId, ctypes.c_int]
        self.lib.ncclAllReduce.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                           ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.ncclCommDestroy.argtypes = [ctypes.c_void_p]

    def check(self, result: int, what: str) -> None:
        if result != 0:
            raise RuntimeError(f"{what} failed: NCCL error {result}: {self.lib.ncclGetErrorString(result).decode()}")

    def version(self) -> str:
        value = ctypes.c_int()
        self.check(self.lib.ncclGetVersion(ctypes.byref(value)), "ncclGetVersion")
        code = value.value
        major, rest = divmod(code, 10000)
        minor, patch = divmod(rest, 100)
        return f"{major}.{minor}.{patch}"


_library: NcclLibrary | None = None


def nccl_library() -> NcclLibrary:
    global _library
    if _library is None:
        _library = NcclLibrary()
    return _library


class PyNccl:
    """SGLang's ``PyNcclCommunicator``: an eager, warmed NCCL communicator beside torch's lazy one."""

    def __init__(self, cpu_group: Any, ranks: tuple[int, ...], device: torch.device) -> None:
        library = nccl_library()
        self.library = library
        group_rank = ranks.index(dist.get_rank())
        unique_id = NcclUniqueId()
        if group_rank == 0:
            library.check(library.lib.ncclGetUniqueId(ctypes.byref(unique_id)), "ncclGetUniqueId")
        buffer = torch.frombuffer(bytearray(bytes(unique_id.internal)), dtype=torch.uint8).clone()
        dist.broadcast(buffer, src=ranks[0], group=cpu_group)
        ctypes.memmove(ctypes.addressof(unique_id), bytes(buffer.tolist()), 128)
        self.comm = ctypes.c_void_p()
        with torch.cuda.device(device):
            library.check(
                library.lib.ncclCommInitRank(ctypes.byref(self.comm), len(ranks), unique_id, group_rank),
                "ncclCommInitRank",
            )
            # As SGLang 0.5.23 (pynccl.py:132-138): the warm-up tensor is allocated *on* the new stream, so
            # torch's caching allocator keeps a 2 MiB segment per communicator until empty_cache. Allocating
            # it on the current stream puts the reference engine 2 MiB below SGLang per pynccl
            # (4 x H200, results/sglang-fidelity-20261127/x4-before-fix/).
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                data = torch.zeros(1, dtype=torch.float32, device=device)
                library.check(
                    library.lib.ncclAllReduce(ctypes.c_void_p(data.data_ptr()), ctypes.c_void_p(data.data_ptr()), 1,
                                              NCCL_FLOAT32, NCCL_SUM, self.comm, ctypes.c_void_p(stream.cuda_stream)),
                    "ncclAllReduce (warm-up)",
                )
            stream.synchronize()
            del data

    def destroy(self) -> None:
        if self.comm:
            self.library.lib.ncclCommDestroy(self.comm)
            self.comm = ctypes.c_void_p()


# --------------------------------------------------------------------------- CUDA runtime

class CudaRuntime:
    """Raw cudaMalloc / CUDA IPC through the CUDA runtime torch loaded (SGLang ``cuda_wrapper.py``)."""

    class IpcHandle(ctypes.Structure):
        _fields_ = [("internal", ctypes.c_byte * 64)]

    def __init__(self) -> None:
        path = loaded_library_path("libcudart")
        if path is None:
            raise RuntimeError("the CUDA runtime library is not loaded in this process")
        self.lib = ctypes.CDLL(path)
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        self.lib.cudaMemset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        self.lib.cudaFree.argtypes = [ctypes.c_void_p]
        self.lib.cudaIpcGetMemHandle.argtypes = [ctypes.POINTER(self.IpcHandle), ctypes.c_void_p]
        self.lib.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), self.IpcHandle, ctypes.c_uint]
        self.lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]

    def check(self, result: int, what: str) -> None:
        if result != 0:
            raise RuntimeError(f"{what} failed: CUDA error {result}: {self.lib.cudaGetErrorString(result).decode()}")

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(pointer), nbytes), "cudaMalloc")
        self.check(self.lib.cudaMemset(pointer, 0, nbytes), "cudaMemset")
        return pointer.value or 0  # ctypes reads a NULL pointer as None

    def ipc_handle(self, pointer: int) -> bytes:
        handle = self.IpcHandle()
        self.check(self.lib.cudaIpcGetMemHandle(ctypes.byref(handle), ctypes.c_void_p(pointer)), "cudaIpcGetMemHandle")
        return bytes(handle.internal)

    def ipc_open(self, raw: bytes) -> int:
        handle = self.IpcHandle()
        ctypes.memmove(ctypes.addressof(handle), raw, 64)
        pointer = ctypes.c_void_p()
        self.check(self.lib.cudaIpcOpenMemHandle(ctypes.byref(pointer), handle, 1), "cudaIpcOpenMemHandle")
        return pointer.value or 0  # ctypes reads a NULL pointer as None

    def free(self, pointer: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(pointer))

    def ipc_close(self, pointer: int) -> None:
        self.lib.cudaIpcCloseMemHandle(ctypes.c_void_p(pointer))


# ------------------------------------------------------------------------ custom all-reduce

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


def _gather(cpu_group: Any, value: Any, size: int) -> list[Any]:
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, value, group=cpu_group)
    return gathered


def custom_allreduce_eligibility(cpu_group: Any, ranks: tuple[int, ...], gpu_uuid: str, implementation: str) -> tuple[str | None, str]:
    """Which implementation SGLang would build for this group, or ``(None, reason)``.

    Collective over ``cpu_group`` (every member must call it). Mirrors
    ``dispatch_custom_allreduce`` -> ``can_use_custom_all_reduce_v2`` /
    ``can_use_custom_all_reduce_with_nvlink``: one node, a supported world size, full NVLink
    (v2 always; v1 for more than two GPUs). P2P is assumed, as SGLang does unless
    ``--enable-p2p-check``.
    """
    size = len(ranks)
    hosts = _gather(cpu_group, nccl_host(), size)
    uuids = _gather(cpu_group, gpu_uuid, size)
    if len(set(hosts)) != 1:
        return None, "group spans several nodes"
    handles = [nvml.handle_by_uuid(uuid) for uuid in uuids]
    full_nvlink = all(nvml.is_available(handle) for handle in handles) and all(
        nvml.nvlink_connected(handles[i], handles[j]) is True for i in range(size) for j in range(i + 1, size)
    )
    properties = torch.cuda.get_device_properties(torch.cuda.current_device())
    v2_sizes = v2_supported_world_sizes(properties.major, properties.minor, properties.multi_processor_count)
    reasons = []
    if implementation == "v2":
        if size not in v2_sizes:
            reasons.append(f"v2: world size {size} not in {list(v2_sizes)}")
        elif not full_nvlink:
            reasons.append("v2: GPUs not all NVLink-connected")
        else:
            return "v2", "full NVLink, one node"
    if size not in V1_WORLD_SIZES:
        reasons.append(f"v1: world size {size} not in {list(V1_WORLD_SIZES)}")
    elif size > 2 and not full_nvlink:
        reasons.append("v1: more than two GPUs without full NVLink")
    else:
        return "v1", "; ".join(reasons + ["v1 layout"])
    return None, "; ".join(reasons)


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
        handles = _gather(cpu_group, runtime.ipc_handle(pointer), size)
        for index, raw in enumerate(handles):
            if index != group_rank:
                result.peer_pointers.append(runtime.ipc_open(raw))
    result.tensors.append(torch.empty(sizes.rank_data_bytes, dtype=torch.uint8, device=device))
    torch.cuda.synchronize(device)
    dist.barrier(group=cpu_group)
    return result, runtime

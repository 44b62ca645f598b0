"""The NCCL library and the CUDA runtime torch loaded, through ctypes (worker side only), shared by the engines'
builders and the calibration.

* :class:`PyNccl`: a second NCCL communicator for a group (SGLang's and vLLM's ``PyNcclCommunicator``):
  unique id from the group's first rank, broadcast over the gloo group, ``ncclCommInitRank``, then a
  1-element fp32 all-reduce on a side stream as warm-up.
* :class:`CudaRuntime`: raw cudaMalloc / CUDA IPC (the engines' ``cuda_wrapper.py``).

This module imports torch and is only imported inside workers.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.distributed as dist


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


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def resolving_library_path(symbol: str) -> str | None:
    """Path of the library that the process's global scope resolves ``symbol`` to, or None.

    With two copies of a library mapped (an ``LD_PRELOAD``ed NCCL beside the one torch's wheel loads by path),
    torch's calls bind to the first in the global search order, the preloaded one; ``/proc/self/maps`` lists both,
    in address order.
    """
    try:
        process = ctypes.CDLL(None)
        address = ctypes.cast(getattr(process, symbol), ctypes.c_void_p).value
        info = _DlInfo()
        if not address or not process.dladdr(ctypes.c_void_p(address), ctypes.byref(info)):
            return None
    except (AttributeError, OSError):
        return None
    return info.dli_fname.decode() if info.dli_fname else None


# ------------------------------------------------------------------------------------ NCCL

class NcclUniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_byte * 128)]


NCCL_FLOAT32 = 7
NCCL_SUM = 0


class NcclLibrary:
    """The NCCL library torch's calls bind to (so pynccl and torch's groups use the same version)."""

    def __init__(self) -> None:
        torch.cuda.nccl.version()  # makes sure torch has loaded NCCL
        self.path = resolving_library_path("ncclGetVersion") or loaded_library_path("libnccl") or "libnccl.so.2"
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

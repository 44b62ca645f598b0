"""The measuring side of ``memprobe calibrate`` (imports torch; run as ``python -m memprobe.measure.calibrate``).

Two modes, each in fresh processes so that "a process's first communicator" is really its first:

* ``single``: one process. Its CUDA context (``set_device`` + a first tensor), then three one-rank
  NCCL communicators, each warmed as SGLang's pynccl does (a 1-element all-reduce on a new stream).
* ``pair``: two processes on the *same* GPU, launched by torchrun. NCCL refuses two ranks on one GPU
  of one host ("Duplicate GPU detected", NCCL init.cc:903-906), so each process sets its own
  ``NCCL_HOSTID`` (misc/utils.cc:87) and NCCL joins them as two nodes over its socket transport. Their
  first two-rank communicator minus their second is the once-per-process cost of a process's first
  communicator of several ranks: a one-rank communicator takes a shorter path (enqueue.cc:2569-2570)
  and costs far less the first time, so it cannot stand in for it.

Each process writes one JSON file into the folder it is given (``<mode>-<rank>.json``): NVML per-process bytes after
every step and torch-reserved bytes. A file, not a line on stdout: torchrun's two workers share one stdout, and
their lines can interleave mid-line.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Callable

import torch

from memprobe.measure import nvml
from memprobe.measure.cuda_libs import NCCL_FLOAT32, NCCL_SUM, NcclUniqueId, nccl_library


def _own_bytes(handle: object) -> int:
    used = nvml.process_memory(handle)
    if not nvml.is_available(used):
        raise RuntimeError(f"NVML lists no processes on the GPU: {used!r}")
    return int(used.get(os.getpid()) or 0)


def _communicator(n_ranks: int, rank: int, unique_id: NcclUniqueId) -> ctypes.c_void_p:
    library = nccl_library()
    comm = ctypes.c_void_p()
    library.check(library.lib.ncclCommInitRank(ctypes.byref(comm), n_ranks, unique_id, rank), "ncclCommInitRank")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # as SGLang's pynccl warm-up (pynccl.py:132-138)
        data = torch.zeros(1, dtype=torch.float32, device="cuda")
        library.check(library.lib.ncclAllReduce(ctypes.c_void_p(data.data_ptr()), ctypes.c_void_p(data.data_ptr()), 1,
                                                NCCL_FLOAT32, NCCL_SUM, comm, ctypes.c_void_p(stream.cuda_stream)),
                      "ncclAllReduce")
    stream.synchronize()
    del data
    torch.cuda.synchronize()
    return comm


def _unique_id(rank: int, broadcast: Callable[[torch.Tensor], object] | None) -> NcclUniqueId:
    unique_id = NcclUniqueId()
    if rank == 0:
        nccl_library().check(nccl_library().lib.ncclGetUniqueId(ctypes.byref(unique_id)), "ncclGetUniqueId")
    if broadcast is not None:
        buffer = torch.frombuffer(bytearray(bytes(unique_id.internal)), dtype=torch.uint8).clone()
        broadcast(buffer)
        ctypes.memmove(ctypes.addressof(unique_id), bytes(buffer.tolist()), 128)
    return unique_id


def _context(handle: object) -> dict[str, int]:
    start = _own_bytes(handle)
    torch.cuda.set_device(0)
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    return {"start_bytes": start, "context_bytes": _own_bytes(handle), "context_reserved": torch.cuda.memory_reserved()}


def _steps(n_ranks: int, rank: int, handle: object, broadcast: Callable[[torch.Tensor], object] | None,
           barrier: Callable[[], object] | None) -> dict[str, int]:
    readings = _context(handle)
    kept = []
    for index in (1, 2, 3):
        kept.append(_communicator(n_ranks, rank, _unique_id(rank, broadcast)))
        if barrier is not None:
            barrier()
        readings[f"communicator_{index}_bytes"] = _own_bytes(handle)
        readings[f"communicator_{index}_reserved"] = torch.cuda.memory_reserved()
    return readings


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit("usage: python -m memprobe.measure.calibrate single|pair FOLDER")
    mode, folder = argv
    visible = nvml.visible_gpus()
    if not nvml.is_available(visible) or not visible:
        raise SystemExit(f"no GPU visible through NVML: {visible!r}")
    handle = nvml.handle_by_uuid(visible[0].uuid)
    torch.cuda.nccl.version()
    if mode == "single":
        readings = _steps(1, 0, handle, None, None)
        rank = 0
    elif mode == "pair":
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        os.environ["NCCL_HOSTID"] = f"memprobe-calibrate-{rank}"  # read by NCCL's first init, not before
        dist.init_process_group("gloo")
        readings = _steps(2, rank, handle, lambda tensor: dist.broadcast(tensor, 0), dist.barrier)
    else:
        raise SystemExit("usage: python -m memprobe.measure.calibrate single|pair FOLDER")
    properties = torch.cuda.get_device_properties(0)
    record: dict[str, object] = dict(
        readings, rank=rank, mode=mode, pid=os.getpid(), gpu_model=properties.name,
        compute_capability=properties.major * 10 + properties.minor, sm_count=properties.multi_processor_count,
        torch=torch.__version__, cuda=str(torch.version.cuda or ""), nccl=nccl_library().version(),
        nccl_library=nccl_library().path)
    written = os.path.join(folder, f"{mode}-{rank}.json")
    with open(written + ".part", "w", encoding="utf-8") as out:
        json.dump(record, out, sort_keys=True)
    os.replace(written + ".part", written)  # whole or absent: the parent never reads half a file
    if mode == "pair":
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""An independent reference for memprobe's figures: builds what one scenario builds, imports nothing from memprobe.

Run with ``python -m torch.distributed.run --nproc-per-node N bench/reference.py --tp 4 --ep 2 --stack full OUT.jsonl``.
Written from SGLang 0.5.23's sources, not from memprobe's code, so that agreeing totals say more than that memprobe's
sampling adds nothing:

* groups (``parallel_state.initialize_model_parallel``, pp = attn_dp = attn_cp = moe_dp = 1): world; tp = the
  ranks ``0..tp-1``; moe_tp = consecutive blocks of ``tp / ep`` ranks; moe_ep = every ``tp / ep``-th rank of the
  tp group. One NCCL and one gloo group per rank list, as ``GroupCoordinator`` does;
* pynccl (``device_communicators/pynccl.py``): ``ncclGetUniqueId`` on the group's first rank, broadcast over
  the gloo group, ``ncclCommInitRank``, a 1-element fp32 all-reduce on a new stream with the tensor allocated
  on that stream, through this file's own ctypes binding of the NCCL library torch loaded;
* custom all-reduce v2 on Hopper (``custom_all_reduce_v2.py`` ``_init_workspace``, tuned table of
  ``configs/custom_all_reduce_v2.py`` for sm90, ``SGLANG_CUSTOM_ALL_REDUCE_V2_MAX_SIZE_KB`` = 16384): one
  symmetric-memory slab of ``2 n x max_push + max_pull + 128 B x 64`` bytes, the ``graph_params`` tensor
  (131072 x n uint64) and the push counter (4 B per SM). Other GPUs: the script says so and stops;
* full stack: pynccl + custom all-reduce on tp, moe_ep and moe_tp; lean: on tp only (SGLang PR #22515);
* then one 1-element all-reduce on every NCCL group of width > 1 (``--warmup tiny``), ``empty_cache``, and one
  NVML read of this process's GPU memory, appended to OUT.jsonl with the wall time.
"""

import argparse
import ctypes
import json
import os
import time

started = time.monotonic()
import pynvml  # noqa: E402  (nvidia-ml-py)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

MiB, KiB = 1 << 20, 1 << 10
# sm90 rows of SGLang 0.5.23's tuned table: world size -> (graph 1-shot push, eager 1-shot push, pull)
SM90_PUSH_PULL = {2: (16 * MiB, 32 * MiB, 128 * MiB), 3: (int(1.25 * MiB), 3 * MiB, 128 * MiB),
                  4: (384 * KiB, 896 * KiB, 128 * MiB), 5: (192 * KiB, 384 * KiB, 32 * MiB),
                  6: (128 * KiB, 192 * KiB, 32 * MiB), 7: (128 * KiB, 128 * KiB, 32 * MiB),
                  8: (128 * KiB, 128 * KiB, 128 * MiB)}
V2_MAX_SIZE = 16384 * KiB


class UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_byte * 128)]


def nccl_library() -> ctypes.CDLL:
    torch.cuda.nccl.version()  # torch loads its NCCL
    with open("/proc/self/maps") as maps:
        paths = [line.split()[-1] for line in maps if "libnccl" in line.split()[-1].rsplit("/", 1)[-1]]
    lib = ctypes.CDLL(paths[0] if paths else "libnccl.so.2")
    lib.ncclCommInitRank.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, UniqueId, ctypes.c_int]
    lib.ncclAllReduce.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_void_p, ctypes.c_void_p]
    lib.ncclCommDestroy.argtypes = [ctypes.c_void_p]
    return lib


def pynccl(lib: ctypes.CDLL, ranks: list[int], cpu_group, device: torch.device) -> ctypes.c_void_p:
    unique_id = UniqueId()
    if dist.get_rank() == ranks[0]:
        assert lib.ncclGetUniqueId(ctypes.byref(unique_id)) == 0
    payload = [bytes(unique_id.internal)]
    dist.broadcast_object_list(payload, src=ranks[0], group=cpu_group)
    ctypes.memmove(ctypes.addressof(unique_id), payload[0], 128)
    comm = ctypes.c_void_p()
    assert lib.ncclCommInitRank(ctypes.byref(comm), len(ranks), unique_id, ranks.index(dist.get_rank())) == 0
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        data = torch.zeros(1, dtype=torch.float32, device=device)
        assert lib.ncclAllReduce(data.data_ptr(), data.data_ptr(), 1, 7, 0, comm, stream.cuda_stream) == 0  # fp32, sum
    stream.synchronize()
    del data
    return comm


def custom_allreduce_v2(ranks: list[int], cpu_group, device: torch.device) -> list:
    from torch._C._distributed_c10d import _SymmetricMemory

    n = len(ranks)
    graph_push, eager_push, pull = SM90_PUSH_PULL[n]
    align = lambda nbytes: (nbytes + 1023) // 1024 * 1024  # noqa: E731
    max_push, max_pull = align(min(max(graph_push, eager_push), V2_MAX_SIZE)), align(min(pull, V2_MAX_SIZE))
    if torch.__version__ < "2.11.0":  # SGLang: older torch enables symmetric memory per group
        import torch.distributed._symmetric_memory as symmetric_memory

        symmetric_memory.enable_symm_mem_for_group(cpu_group.group_name)
    graph_params = torch.zeros((131072, n), dtype=torch.uint64, device=device)
    slab = _SymmetricMemory.empty_strided_p2p((2 * n * max_push + max_pull + 128 * 64,), [1], torch.uint8, device,
                                             cpu_group.group_name)
    handle = _SymmetricMemory.rendezvous(slab)
    slab.zero_()
    torch.cuda.synchronize(device)
    dist.barrier(group=cpu_group)
    counter = torch.zeros((torch.cuda.get_device_properties(device).multi_processor_count,), dtype=torch.uint32, device=device)
    dist.barrier(group=cpu_group)
    return [graph_params, slab, handle, counter]


def sglang_groups(world: int, tp: int, ep: int) -> dict[str, list[list[int]]]:
    moe_tp = tp // ep
    return {"world": [list(range(world))], "tp": [list(range(tp))],
            "moe_ep": [list(range(m, tp, moe_tp)) for m in range(moe_tp)],
            "moe_tp": [list(range(b, b + moe_tp)) for b in range(0, tp, moe_tp)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--stack", choices=("full", "lean"), default="lean")
    parser.add_argument("out")
    args = parser.parse_args()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    if torch.cuda.get_device_capability(device)[0] != 9:
        raise SystemExit("bench/reference.py models SGLang's custom all-reduce v2 on Hopper (sm90) only")
    dist.init_process_group("nccl")
    lib, kept, extra = nccl_library(), {}, []
    built = {"tp": True, "moe_ep": args.stack == "full", "moe_tp": args.stack == "full"}
    for name, rank_lists in sglang_groups(dist.get_world_size(), args.tp, args.ep).items():
        if name != "world" and (len(rank_lists[0]) == 1 or (name != "tp" and rank_lists == [list(range(args.tp))])):
            continue  # width 1 (never used) or the same ranks as tp (an alias in SGLang)
        for ranks in rank_lists:
            groups = (dist.new_group(ranks, backend="nccl"), dist.new_group(ranks, backend="gloo"))
            if rank in ranks:
                kept[name] = (groups, ranks)
        (_, cpu_group), ranks = kept[name]
        if built.get(name):
            extra.append(pynccl(lib, ranks, cpu_group, device))
            extra.append(custom_allreduce_v2(ranks, cpu_group, device))
    for (device_group, _), ranks in kept.values():
        dist.all_reduce(torch.ones(1, device=device), group=device_group)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    dist.barrier(group=kept["world"][0][1])
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByUUID("GPU-" + str(torch.cuda.get_device_properties(device).uuid))
    used = next((p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()), None)
    with open(args.out, "a") as stream:
        stream.write(json.dumps({"rank": rank, "process_bytes": used, "wall_s": time.monotonic() - started}) + "\n")
    for item in extra:
        if isinstance(item, ctypes.c_void_p):
            lib.ncclCommDestroy(item)
    dist.barrier(group=kept["world"][0][1])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

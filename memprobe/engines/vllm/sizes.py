"""Byte sizes of vLLM's non-NCCL communicators at init, per release line, as integers.

NCCL communicators (PyNccl, torch's process groups) are sized by ``memprobe/estimate/nccl.py``; this module
sizes what ``communicators.decide`` says is built besides them: custom all-reduce's IPC buffers, torch
symmetric memory, the 0.33 custom all-reduce's multicast stage buffer, and the MQ broadcaster's host shared
memory. The all-to-all managers allocate nothing at init in any modelled release (their buffers come from
``get_handle`` after model load), so they get no allocation here. ``car`` is
``vllm/distributed/device_communicators/custom_all_reduce.py``, ``aru`` is ``.../all_reduce_utils.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from memprobe.engines.vllm.communicators import (
    CUSTOM_ALLREDUCE,
    CUSTOM_ALLREDUCE_MNNVL,
    MQ_BROADCASTER,
    SYMM_MEM,
    Decisions,
)

KiB = 1024
MiB = 1024 * KiB

#: CUSTOM_ALL_REDUCE_MAX_SIZES: custom all-reduce's max_size when symmetric memory is on.
#: 0.33.0 aru:31-57; 0.11.0 aru:31-45 and 0.10.2 aru:30-44 hold the 9.0 and 10.0 rows only.
_CA_MAX_9_10 = {"9.0": {2: 64 * MiB, 4: 32 * MiB, 6: MiB // 2, 8: MiB // 4},
                "10.0": {2: 2 * MiB, 4: 2 * MiB, 6: 1 * MiB, 8: 1 * MiB}}
_CA_MAX_103 = {2: 4 * MiB, 4: 4 * MiB, 6: 8 * MiB, 8: 4 * MiB}
CUSTOM_ALL_REDUCE_MAX_SIZES: dict[str, dict[str, dict[int, int]]] = {
    "0.33": {**_CA_MAX_9_10, "10.3": _CA_MAX_103, "10.7": _CA_MAX_103},
    "0.11-0.2x": _CA_MAX_9_10,
    "0.10": _CA_MAX_9_10,
}
#: SYMM_MEM_ALL_REDUCE_MAX_SIZES: the symmetric-memory buffer per rank. 0.33.0 aru:58-83; 0.11.0 aru:45-56;
#: 0.10.2 aru:44-55.
_SYMM_9_10 = {"9.0": {2: 64 * MiB, 4: 32 * MiB, 6: 64 * MiB, 8: 64 * MiB},
              "10.0": {2: 8 * MiB, 4: 32 * MiB, 6: 128 * MiB, 8: 128 * MiB}}
_SYMM_103 = {2: 4 * MiB, 4: 32 * MiB, 6: 32 * MiB, 8: 64 * MiB}
SYMM_MEM_ALL_REDUCE_MAX_SIZES: dict[str, dict[str, dict[int, int]]] = {
    "0.33": {**_SYMM_9_10, "10.3": _SYMM_103, "10.7": _SYMM_103},
    "0.11-0.2x": _SYMM_9_10,
    "0.10": _SYMM_9_10,
}
#: FlashInfer all-reduce's per-world-size sizes (MB), keyed by capability; 0.33.0
#: ``compilation/passes/fusion/allreduce_rms_fusion.py:104-126``. Only which world sizes it lists is used
#: (FlashInferAllReduce is disabled for others); its workspace is lazy.
FI_ALLREDUCE_FUSION_MAX_SIZE_MB: dict[str, dict[int, float]] = {
    "9.0": {2: 64, 4: 2, 8: 0.5},
    "10.0": {2: 64, 4: 32, 8: 1, 16: 64},
    "10.3": {2: 64, 4: 64, 8: 4, 16: 64},
    "10.7": {2: 64, 4: 64, 8: 2},
}

#: CustomAllreduce(max_size=8192 * 1024): car:138 (0.33.0), car:57 (0.11.0, 0.10.2).
CA_DEFAULT_MAX_SIZE = 8 * MiB
#: ops.meta_size() = sizeof(vllm::Signal): 128-byte aligned uint32 start[36][8], end[36][8] and _flag[36]
#: (csrc/custom_all_reduce.cuh:33,55-59, read from vLLM's source for the research notes; the wheel holds
#: only the compiled kernel).
CA_SIGNAL_BYTES = 2560
CA_RANK_DATA_BYTES = 8 * MiB  # torch.empty(8 * 1024 * 1024, uint8): car:316-318 (0.33.0), car:175 (0.11.0)
#: 0.33.0: the IPC buffer is max(max_size, all-gather 2 MiB, reduce-scatter 16 MiB) (car:120,128,303).
CA_ALL_GATHER_MAX_SIZE = 2 * MiB
CA_REDUCE_SCATTER_MAX_SIZE = 16 * MiB
#: 0.33.0 MNNVL stage: 6 x max(all-gather size per rank x ranks, 16 MiB) (car:121-129, 338-342, 361).
CA_MNNVL_ALL_GATHER_MAX_SIZES = {2: 8 * MiB, 4: 4 * MiB, 6: 2 * MiB, 8: 2 * MiB, 16: 2 * MiB}
CA_MNNVL_REDUCE_SCATTER_MAX_SIZE = 16 * MiB
#: MessageQueue.create_from_process_group(cpu_group, 1 << 22, 6): parallel_state.py:565-567 (0.33.0).
MQ_MAX_CHUNK_BYTES = 1 << 22
MQ_MAX_CHUNKS = 6


def custom_allreduce_world_sizes(release_line: str) -> tuple[int, ...]:
    """CustomAllreduce._SUPPORTED_WORLD_SIZES: car:118 (0.33.0, 16 added), car:51 (0.11.0, 0.10.2)."""
    return (2, 4, 6, 8, 16) if release_line == "0.33" else (2, 4, 6, 8)


def symm_mem_max_size(release_line: str, capability: str, world_size: int) -> int | None:
    """The symmetric-memory buffer (bytes), or None where SymmMemCommunicator returns before allocating
    (symm_mem.py:66-78 of 0.33.0)."""
    return SYMM_MEM_ALL_REDUCE_MAX_SIZES[release_line].get(capability, {}).get(world_size)


def custom_allreduce_max_size(release_line: str, capability: str, world_size: int, symm_mem_enabled: bool) -> int:
    """max_size: 8 MiB, clamped to the capability's table when symmetric memory is enabled (car:238-251 of
    0.33.0, car:112-121 of 0.11.0)."""
    if symm_mem_enabled:
        table = CUSTOM_ALL_REDUCE_MAX_SIZES[release_line].get(capability, {})
        if world_size in table:
            return min(table[world_size], CA_DEFAULT_MAX_SIZE)
    return CA_DEFAULT_MAX_SIZE


@dataclass(frozen=True)
class Allocation:
    """Bytes one rank holds at init for one object of one group."""

    group: str
    kind: str
    name: str  # the buffer, as vLLM names it
    nbytes: int
    memory: str  # "device" or "host"
    source: str


def custom_allreduce_allocations(group: str, line: str, capability: str, width: int, symm_on: bool,
                      mnnvl_kept: bool) -> list[Allocation]:
    max_size = custom_allreduce_max_size(line, capability, width, symm_on)
    if line == "0.33":
        buffer = max(max_size, CA_ALL_GATHER_MAX_SIZE, CA_REDUCE_SCATTER_MAX_SIZE)
        meta_source, buffer_source, rank_source = "car:295-297 (0.33.0)", "car:303-309 (0.33.0)", "car:316-318 (0.33.0)"
    else:
        release = "0.11.0" if line == "0.11-0.2x" else "0.10.2"
        buffer = max_size
        meta_source, buffer_source, rank_source = (f"car:164-165 ({release})", f"car:169 ({release})",
                                                   f"car:175-177 ({release})")
    found = [
        Allocation(group, CUSTOM_ALLREDUCE, "meta", CA_SIGNAL_BYTES + max_size, "device", meta_source),
        Allocation(group, CUSTOM_ALLREDUCE, "buffer", buffer, "device", buffer_source),
        Allocation(group, CUSTOM_ALLREDUCE, "rank_data", CA_RANK_DATA_BYTES, "device", rank_source),
    ]
    if mnnvl_kept:
        stage = max(CA_MNNVL_ALL_GATHER_MAX_SIZES[width] * width, CA_MNNVL_REDUCE_SCATTER_MAX_SIZE)
        found.append(Allocation(group, CUSTOM_ALLREDUCE_MNNVL, "mnnvl_buffer", 6 * stage, "device",
                                "car:338-342,361-363 (0.33.0)"))
    return found


def mq_broadcaster_bytes(width: int) -> int:
    """The writer's ring: (max_chunk_bytes + 1 + readers) x max_chunks (shm_broadcast.py:335-349 of 0.33.0),
    with every reader on the writer's node (n_local_reader = width - 1, shm_broadcast.py:1131-1139)."""
    return (MQ_MAX_CHUNK_BYTES + 1 + (width - 1)) * MQ_MAX_CHUNKS


def allocations(decisions: Decisions, rank: int = 0) -> tuple[Allocation, ...]:
    """What ``rank`` (a rank of one process world) holds at init beside NCCL, group by group.

    The MQ broadcaster's ring is host shared memory created by the first rank of each group row (the writer,
    shm_broadcast.py:1124-1139); the other ranks map it, so it is counted on the writer only.
    """
    line, gpu = decisions.release_line, decisions.gpu
    found: list[Allocation] = []
    for entry in decisions.groups:
        group = entry.group
        if group.is_alias:
            continue
        width = group.width
        symm = entry.decision(SYMM_MEM)
        if symm is not None and symm.built:
            size = symm_mem_max_size(line, gpu.capability, width)
            assert size is not None  # decide() builds it only when the table has the entry
            found.append(Allocation(group.name, SYMM_MEM, "buffer", size, "device", symm.source))
        if entry.built(CUSTOM_ALLREDUCE):
            symm_on = symm is not None and symm.built and gpu.multicast  # SymmMemCommunicator not disabled
            found += custom_allreduce_allocations(group.name, line, gpu.capability, width, symm_on,
                                       entry.built(CUSTOM_ALLREDUCE_MNNVL))
        if entry.built(MQ_BROADCASTER) and group.ranks_of(rank)[0] == rank:
            found.append(Allocation(group.name, MQ_BROADCASTER, "shm ring", mq_broadcaster_bytes(width), "host",
                                    "parallel_state.py:565-567; shm_broadcast.py:335-349 (0.33.0)"))
    return tuple(found)

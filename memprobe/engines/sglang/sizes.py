"""Buffer sizes of SGLang 0.5.23's custom all-reduce, as pure arithmetic.

v2 (``device_communicators/custom_all_reduce_v2.py`` ``_init_workspace``): one symmetric
allocation of ``2n`` push slots x ``max_push`` + ``max_pull`` + 128 B x pull blocks, where
``max_push``/``max_pull`` come from the tuned table for the GPU generation
(``configs/custom_all_reduce_v2.py``), clipped to ``SGLANG_CUSTOM_ALL_REDUCE_V2_MAX_SIZE_KB``
(16 MiB) and 1 KiB aligned; plus ``graph_params`` (131072 x n uint64 = n MiB) and a push
counter (4 B per push block). v1 (``custom_all_reduce.py``): ``meta`` (Signal + 8 MiB) and
``buffer`` (8 MiB) raw-cudaMalloc'd and IPC-shared, plus ``rank_data`` (8 MiB torch tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

from memprobe.units import KIB as KiB, MIB as MiB
ALIGN_BYTES = 1024
SEMAPHORE_BYTES = 128
MAX_GRAPH_INPUTS = 131072
DEFAULT_V2_MAX_SIZE = 16384 * KiB  # SGLANG_CUSTOM_ALL_REDUCE_V2_MAX_SIZE_KB default
V1_MAX_SIZE = 8192 * KiB  # _MAX_CAR_SIZE on CUDA
V1_SIGNAL_BYTES = 4 * KiB  # sizeof(Signal) in sgl_kernel is a few KiB; cudaMalloc rounds to 2 MiB anyway
V1_WORLD_SIZES = (2, 4, 6, 8)


def _align(nbytes: int, align: int = ALIGN_BYTES) -> int:
    return (nbytes + align - 1) // align * align


def _two_shot_push_slot_bytes(nbytes: int, world_size: int) -> int:
    return 32 * -(-nbytes // (16 * world_size))


# Per world size: (graph 1shot_push, eager 1shot_push, max pull bytes over both contexts, 2shot_push)
# int() of the float table entries, as SGLang's _pack_heuristic does.
_M = MiB
_SM90 = {
    2: (16 * _M, 32 * _M, 128 * _M, 0),
    3: (int(1.25 * _M), 3 * _M, 128 * _M, 0),
    4: (384 * KiB, 896 * KiB, 128 * _M, 0),
    5: (192 * KiB, 384 * KiB, 32 * _M, 0),
    6: (128 * KiB, 192 * KiB, 32 * _M, 0),
    7: (128 * KiB, 128 * KiB, 32 * _M, 0),
    8: (128 * KiB, 128 * KiB, 128 * _M, 0),
}
_SM100 = {
    2: (8 * _M, 16 * _M, 128 * _M, 0),
    3: (4 * _M, 8 * _M, 128 * _M, 0),
    4: (int(0.625 * _M), int(0.625 * _M), 128 * _M, 8 * _M),
    5: (int(1.5 * _M), 2 * _M, 128 * _M, 0),
    6: (1 * _M, int(1.25 * _M), 128 * _M, 0),
    7: (int(0.625 * _M), 1 * _M, 128 * _M, 0),
    8: (256 * KiB, 256 * KiB, 128 * _M, 8 * _M),
    16: (256 * KiB, 256 * KiB, 128 * _M, 0),
}
_SM107 = {
    2: (128 * _M, 128 * _M, 128 * _M, 0),
    3: (int(19.625 * _M), int(39.188 * _M), 128 * _M, 0),
    4: (int(6.938 * _M), int(9.812 * _M), 128 * _M, 0),
    5: (int(6.938 * _M), int(6.938 * _M), 128 * _M, 0),
    6: (int(4.875 * _M), int(4.875 * _M), 128 * _M, 0),
    7: (int(3.438 * _M), int(3.438 * _M), 128 * _M, 0),
    8: (int(2.438 * _M), int(2.438 * _M), 128 * _M, 0),
    16: (832 * KiB, 832 * KiB, 128 * _M, 0),
}


def _table(major: int, minor: int, num_sm: int) -> tuple[dict[int, tuple[int, int, int, int]], int | None]:
    """(table, pull blocks) for a GPU generation; ``None`` pull blocks means "num_sm" rules below."""
    if major == 9:
        return _SM90, 64
    if major == 10 and minor >= 7:
        return _SM107, min(192, num_sm)
    if major == 10:
        return _SM100, None  # num_sm for world 2, else 96
    return {n: (1 * _M, 1 * _M, 16 * _M, 0) for n in range(2, 17)}, num_sm


def v2_supported_world_sizes(major: int, minor: int, num_sm: int = 132) -> tuple[int, ...]:
    return tuple(sorted(_table(major, minor, num_sm)[0]))


@dataclass(frozen=True)
class V2Workspace:
    symmetric_bytes: int
    graph_params_bytes: int
    push_counter_bytes: int
    max_push_bytes: int
    max_pull_bytes: int
    pull_blocks: int

    @property
    def total_bytes(self) -> int:
        return self.symmetric_bytes + self.graph_params_bytes + self.push_counter_bytes


def v2_workspace(world_size: int, major: int, minor: int, num_sm: int, max_size: int = DEFAULT_V2_MAX_SIZE) -> V2Workspace:
    table, pull_blocks = _table(major, minor, num_sm)
    if world_size not in table:
        raise ValueError(f"custom all-reduce v2 has no config for world size {world_size} on sm_{major}{minor}")
    graph_push, eager_push, pull, two_shot_push = table[world_size]
    if pull_blocks is None:
        pull_blocks = num_sm if world_size == 2 else 96
    push = max(graph_push, eager_push, _two_shot_push_slot_bytes(two_shot_push, world_size) if two_shot_push else 0)
    max_push = _align(max(min(push, max_size), ALIGN_BYTES))
    max_pull = _align(max(min(pull, max_size), ALIGN_BYTES))
    symmetric = 2 * world_size * max_push + max_pull + SEMAPHORE_BYTES * pull_blocks
    return V2Workspace(
        symmetric_bytes=symmetric,
        graph_params_bytes=MAX_GRAPH_INPUTS * world_size * 8,
        push_counter_bytes=4 * num_sm,
        max_push_bytes=max_push,
        max_pull_bytes=max_pull,
        pull_blocks=pull_blocks,
    )


@dataclass(frozen=True)
class V1Buffers:
    meta_bytes: int = V1_SIGNAL_BYTES + V1_MAX_SIZE
    buffer_bytes: int = V1_MAX_SIZE
    rank_data_bytes: int = V1_MAX_SIZE

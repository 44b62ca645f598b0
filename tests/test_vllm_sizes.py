"""Bytes of vLLM's non-NCCL communicators at init, from each release's sizing lines."""

from __future__ import annotations

from memprobe.engines.vllm.communicators import GPUFacts, decide
from memprobe.engines.vllm.layout import VLLMLayout
from memprobe.engines.vllm.sizes import allocations, mq_broadcaster_bytes

KiB, MiB = 1024, 1024 * 1024
SIGNAL = 2560


def _bytes(layout: VLLMLayout, line: str = "0.33", gpu: GPUFacts = GPUFacts(), rank: int = 0) -> dict[tuple, int]:
    return {(a.group, a.kind, a.name): a.nbytes for a in allocations(decide(layout, line, gpu=gpu), rank)}


def test_tp8_h200_per_release() -> None:
    tp8 = VLLMLayout(tp=8, moe=True)
    mq = (4 * MiB + 8) * 6
    assert _bytes(tp8) == {
        ("tp", "symm_mem", "buffer"): 64 * MiB,  # SYMM_MEM_ALL_REDUCE_MAX_SIZES["9.0"][8]
        ("tp", "custom_allreduce", "meta"): SIGNAL + 256 * KiB,  # max_size clamped to 256 KiB by symm mem
        ("tp", "custom_allreduce", "buffer"): 16 * MiB,  # max(256 KiB, 2 MiB, 16 MiB)
        ("tp", "custom_allreduce", "rank_data"): 8 * MiB,
        ("tp", "custom_allreduce_mnnvl_buffer", "mnnvl_buffer"): 96 * MiB,  # 6 x max(2 MiB x 8, 16 MiB)
        ("tp", "mq_broadcaster", "shm ring"): mq,
    }
    assert _bytes(tp8, "0.11-0.2x") == {
        ("tp", "symm_mem", "buffer"): 64 * MiB,
        ("tp", "custom_allreduce", "meta"): SIGNAL + 256 * KiB,
        ("tp", "custom_allreduce", "buffer"): 256 * KiB,
        ("tp", "custom_allreduce", "rank_data"): 8 * MiB,
        ("tp", "mq_broadcaster", "shm ring"): mq,
    }
    assert _bytes(tp8, "0.10") == {  # symmetric memory off by default: max_size stays 8 MiB
        ("tp", "custom_allreduce", "meta"): SIGNAL + 8 * MiB,
        ("tp", "custom_allreduce", "buffer"): 8 * MiB,
        ("tp", "custom_allreduce", "rank_data"): 8 * MiB,
        ("tp", "mq_broadcaster", "shm ring"): mq,
    }


def test_tp4_clamp_and_tp16_mnnvl_stage() -> None:
    tp4 = _bytes(VLLMLayout(tp=4))
    assert tp4[("tp", "symm_mem", "buffer")] == 32 * MiB
    assert tp4[("tp", "custom_allreduce", "meta")] == SIGNAL + 8 * MiB  # min(32 MiB, 8 MiB)
    assert tp4[("tp", "custom_allreduce_mnnvl_buffer", "mnnvl_buffer")] == 96 * MiB  # 6 x max(4 MiB x 4, 16 MiB)
    tp16 = _bytes(VLLMLayout(tp=16))
    assert ("tp", "symm_mem", "buffer") not in tp16  # no 9.0 entry for 16 ranks
    assert tp16[("tp", "custom_allreduce_mnnvl_buffer", "mnnvl_buffer")] == 6 * 32 * MiB


def test_without_multicast_the_symm_buffer_stays_but_no_clamp_and_no_stage() -> None:
    found = _bytes(VLLMLayout(tp=8), gpu=GPUFacts(multicast=False))
    assert found[("tp", "symm_mem", "buffer")] == 64 * MiB
    assert found[("tp", "custom_allreduce", "meta")] == SIGNAL + 8 * MiB
    assert found[("tp", "custom_allreduce", "buffer")] == 16 * MiB
    assert ("tp", "custom_allreduce_mnnvl_buffer", "mnnvl_buffer") not in found


def test_mq_ring_is_counted_on_each_group_writer_only() -> None:
    layout = VLLMLayout(tp=4, dp=2, moe=True)
    assert ("tp", "mq_broadcaster", "shm ring") in _bytes(layout, rank=4)  # first rank of the second TP group
    assert ("tp", "mq_broadcaster", "shm ring") not in _bytes(layout, rank=5)
    assert mq_broadcaster_bytes(4) == (4 * MiB + 4) * 6


def test_disabled_custom_allreduce_and_lazy_ep_allocate_nothing() -> None:
    found = _bytes(VLLMLayout(tp=4, dp=2, moe=True, disable_custom_all_reduce=True))
    assert {key[1] for key in found} == {"symm_mem", "mq_broadcaster"}
    assert not any(group == "ep" for group, _, _ in found)  # the all2all manager's buffers are lazy
    for allocation in allocations(decide(VLLMLayout(tp=8))):
        assert isinstance(allocation.nbytes, int) and allocation.source
        assert allocation.memory == ("host" if allocation.kind == "mq_broadcaster" else "device")

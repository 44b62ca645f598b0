"""CudaCommunicator's decisions per group and release line, and the proposed shared-ep stack.

The hardware checks are taken on CUDA only (read from each release's source); the gates CudaCommunicator takes
from the group's name, vLLM's flags and the environment are checked against each release's own CudaCommunicator
run on CPU (tests/fixtures/vllm-<release>-cuda-communicator.json); which groups get a device communicator and
an MQ broadcaster is checked in test_vllm_layout.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprobe.engines.vllm.communicators import (
    ALL2ALL_MANAGER,
    CUSTOM_ALLREDUCE,
    CUSTOM_ALLREDUCE_MNNVL,
    ENV_PRESET,
    FLASHINFER_ALLREDUCE,
    MQ_BROADCASTER,
    PYNCCL,
    RELEASE_LINES,
    SYMM_MEM,
    GPUFacts,
    cuda_gates,
    decide,
)
from memprobe.engines.vllm.layout import RELEASE_OF_LINE, VLLMLayout, all2all_backend, plan

CUDA_FIXTURES = {line: Path(__file__).parent / "fixtures" / f"vllm-{release}-cuda-communicator.json"
                 for line, release in RELEASE_OF_LINE.items()}

#: The all2all manager class CudaCommunicator builds for a backend (cc:203-208 of 0.33.0, where "naive" is
#: AgRs too; cc:93-100 of 0.11.0; cc:86-88 of 0.10.2)
MANAGER_CLASS = {"allgather_reducescatter": "AgRsAll2AllManager", "naive": "NaiveAll2AllManager"}

TP8_MOE = VLLMLayout(tp=8, moe=True, enable_expert_parallel=True)
TP8_EPLB = VLLMLayout(tp=8, moe=True, enable_expert_parallel=True, enable_eplb=True)


def _pynccl_groups(layout: VLLMLayout, line: str = "0.33", stack: str = "vllm") -> list[str]:
    return [entry.group.name for entry in decide(layout, line, stack).groups if entry.built(PYNCCL)]


def test_tp8_moe_holds_two_pynccl_communicators_over_the_same_ranks() -> None:
    """vllm PR #24982 (0.11.0) gave EP its own PyNccl; at --tp 8 (DP 1) EP's ranks are TP's."""
    assert _pynccl_groups(TP8_MOE) == ["tp", "ep"]
    assert _pynccl_groups(TP8_EPLB) == ["tp", "ep", "eplb"]
    assert _pynccl_groups(TP8_MOE, "0.11-0.2x") == ["tp", "ep"]
    assert _pynccl_groups(TP8_MOE, "0.10") == ["tp"]  # 'ep does not use pynccl'


def test_0_11_builds_ep_pynccl_for_a_dense_model_too() -> None:
    dense = VLLMLayout(tp=8)
    assert _pynccl_groups(dense) == ["tp"]
    assert _pynccl_groups(dense, "0.11-0.2x") == ["tp", "ep"]


def test_shared_ep_reuses_tp_only_where_the_ranks_are_tp() -> None:
    assert _pynccl_groups(TP8_EPLB, stack="shared-ep") == ["tp"]
    ep = decide(TP8_EPLB, stack="shared-ep").for_group("ep").decision(PYNCCL)
    assert ep is not None and not ep.built and ep.shares_with == "tp"
    # DP 2: EP spans both TP groups, so it needs its own communicator
    assert _pynccl_groups(VLLMLayout(tp=4, dp=2, moe=True), stack="shared-ep") == ["tp", "dp", "ep"]
    # PP 2: EP's rows are (-1, dp*pcp*tp) of the PP-major array: the TP rows again, so the saving holds
    assert _pynccl_groups(VLLMLayout(tp=4, pp=2, moe=True), stack="shared-ep") == ["tp", "pp"]


def test_every_group_wider_than_one_gets_pynccl_and_singletons_none() -> None:
    layout = VLLMLayout(tp=2, pp=2, dp=2, moe=True)
    assert _pynccl_groups(layout) == ["tp", "pp", "dp", "ep"]
    entries = decide(VLLMLayout(tp=8, moe=True)).groups
    assert [e.group.name for e in entries if not e.decisions] == ["world", "etp", "pcp", "pp", "dp"]
    assert decide(VLLMLayout(tp=8, moe=True)).for_group("dcp").decisions[0].kind == MQ_BROADCASTER


def test_vllm_disable_pynccl() -> None:
    decisions = decide(TP8_MOE, env={"VLLM_DISABLE_PYNCCL": "1"})
    assert not decisions.for_group("tp").built(PYNCCL) and not decisions.for_group("ep").built(PYNCCL)


def test_only_tp_gets_the_all_reduce_accelerators() -> None:
    decisions = decide(VLLMLayout(tp=2, pp=2, dp=2, moe=True))
    assert decisions.for_group("tp").built(CUSTOM_ALLREDUCE) and decisions.for_group("tp").built(SYMM_MEM)
    for name in ("pp", "dp", "ep"):
        entry = decisions.for_group(name)
        assert not any(entry.built(kind) for kind in (CUSTOM_ALLREDUCE, SYMM_MEM, FLASHINFER_ALLREDUCE)), name


@pytest.mark.parametrize(
    "layout, line, gpu, built, reason",
    [
        (VLLMLayout(tp=8), "0.33", GPUFacts(), True, "IPC buffers"),
        (VLLMLayout(tp=8, disable_custom_all_reduce=True), "0.33", GPUFacts(), False, "--disable-custom-all-reduce"),
        (VLLMLayout(tp=3), "0.33", GPUFacts(), False, "world size 3"),
        (VLLMLayout(tp=16), "0.33", GPUFacts(), True, "IPC buffers"),
        (VLLMLayout(tp=16), "0.11-0.2x", GPUFacts(), False, "world size 16"),
        (VLLMLayout(tp=4), "0.33", GPUFacts(fully_connected=False), False, "without full NVLink"),
        (VLLMLayout(tp=2), "0.33", GPUFacts(fully_connected=False), True, "IPC buffers"),
        (VLLMLayout(tp=2), "0.33", GPUFacts(p2p=False), False, "P2P"),
        (VLLMLayout(tp=8), "0.11-0.2x", GPUFacts(same_node=False), False, "spans nodes"),
        (VLLMLayout(tp=8), "0.33", GPUFacts(same_node=False), False, "without MNNVL"),
        (VLLMLayout(tp=8), "0.33", GPUFacts(same_node=False, capability="10.0"), True, "IPC buffers"),
        (VLLMLayout(tp=8), "0.33", GPUFacts(vllm_c=False), False, "vllm._C"),
    ],
)
def test_custom_allreduce_eligibility(layout: VLLMLayout, line: str, gpu: GPUFacts, built: bool, reason: str) -> None:
    decision = decide(layout, line, gpu=gpu).for_group("tp").decision(CUSTOM_ALLREDUCE)
    assert decision is not None and decision.built is built and reason in decision.reason
    assert decision.source


def test_symm_mem_per_release_and_machine() -> None:
    tp8 = VLLMLayout(tp=8)
    assert decide(tp8).for_group("tp").built(SYMM_MEM)
    assert decide(tp8, "0.11-0.2x").for_group("tp").built(SYMM_MEM)
    assert not decide(tp8, "0.10").for_group("tp").built(SYMM_MEM)  # default 0 in 0.10.2
    assert decide(tp8, "0.10", env={"VLLM_ALLREDUCE_USE_SYMM_MEM": "1"}).for_group("tp").built(SYMM_MEM)
    assert not decide(tp8, env={"VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}).for_group("tp").built(SYMM_MEM)
    assert not decide(tp8, gpu=GPUFacts(capability="8.0")).for_group("tp").built(SYMM_MEM)  # no table entry
    no_multicast = decide(tp8, gpu=GPUFacts(multicast=False)).for_group("tp")
    assert no_multicast.built(SYMM_MEM) and "no multicast" in no_multicast.decision(SYMM_MEM).reason
    assert not no_multicast.built(CUSTOM_ALLREDUCE_MNNVL)
    # 0.10.2 gates symmetric memory by the env switch only, not by the group's name
    old = decide(VLLMLayout(tp=2, dp=2, moe=True), "0.10", env={"VLLM_ALLREDUCE_USE_SYMM_MEM": "1"})
    assert old.for_group("dp").built(SYMM_MEM)


def test_flashinfer_allreduce_is_built_lazily_on_tp_in_0_33_only() -> None:
    tp = decide(VLLMLayout(tp=8)).for_group("tp")
    decision = tp.decision(FLASHINFER_ALLREDUCE)
    assert decision is not None and decision.built and not decision.eager
    assert not decide(VLLMLayout(tp=6)).for_group("tp").built(FLASHINFER_ALLREDUCE)  # no size for 6 on sm 9.0
    assert decide(VLLMLayout(tp=8), "0.11-0.2x").for_group("tp").decision(FLASHINFER_ALLREDUCE) is None
    assert not decide(VLLMLayout(tp=8), gpu=GPUFacts(flashinfer=False)).for_group("tp").built(FLASHINFER_ALLREDUCE)


def test_all2all_manager_object_only_where_use_all2all_and_no_buffers_at_init() -> None:
    assert not decide(TP8_MOE).for_group("ep").built(ALL2ALL_MANAGER)
    dp2 = decide(VLLMLayout(tp=4, dp=2, moe=True, all2all_backend="deepep_low_latency")).for_group("ep")
    manager = dp2.decision(ALL2ALL_MANAGER)
    assert manager is not None and manager.built and not manager.eager and "deepep_low_latency" in manager.reason
    assert decide(VLLMLayout(tp=4, dp=2, moe=True), "0.10").for_group("ep").built(ALL2ALL_MANAGER)


def test_mq_broadcaster_on_tp_and_dcp_when_wider_than_one() -> None:
    decisions = decide(VLLMLayout(tp=4, dcp=2))
    assert decisions.for_group("tp").built(MQ_BROADCASTER) and decisions.for_group("dcp").built(MQ_BROADCASTER)
    assert not decide(VLLMLayout(tp=1, pp=2)).for_group("tp").built(MQ_BROADCASTER)


def test_every_decision_cites_a_source_and_unknown_lines_are_refused() -> None:
    for line in RELEASE_LINES:
        for stack in ("vllm", "shared-ep"):
            for entry in decide(TP8_EPLB if line == "0.33" else TP8_MOE, line, stack).groups:
                for decision in entry.decisions:
                    assert decision.source and decision.reason and decision.group == entry.group.name
    with pytest.raises(ValueError, match="release line"):
        decide(TP8_MOE, "0.12")
    with pytest.raises(ValueError, match="stack"):
        decide(TP8_MOE, stack="lean")


def test_vllm_sets_no_nccl_variable() -> None:
    assert ENV_PRESET == {}


# --------------------------------------------------------------------------- against each release's own code


def _cuda_entries() -> list[tuple[str, dict]]:
    return [(line, entry) for line, path in CUDA_FIXTURES.items() for entry in json.loads(path.read_text())["layouts"]]


def _entry_id(case: tuple[str, dict]) -> str:
    line, entry = case
    env = "-".join(f"{name}={value}" for name, value in entry.get("env", {}).items())
    return "-".join(part for part in (RELEASE_OF_LINE[line], VLLMLayout(**entry["layout"]).slug(), env) if part)


@pytest.mark.parametrize("line", list(CUDA_FIXTURES))
def test_cuda_fixture_header(line: str) -> None:
    data = json.loads(CUDA_FIXTURES[line].read_text())
    release = RELEASE_OF_LINE[line]
    command = data["provenance"]["command"]
    assert data["provenance"]["vllm"] == release and "--cuda-communicator" in command
    assert f"src-{release}" in command and (line == "0.33" or f"--release {release}" in command)
    layouts = [VLLMLayout(**entry["layout"]) for entry in data["layouts"]]
    assert len(layouts) >= 10
    assert {layout.disable_custom_all_reduce for layout in layouts} == {True, False}
    ep_flags = {group["cuda_flags"]["use_all2all"] for entry in data["layouts"] for group in entry["groups"]
                if group["group_name"] == "ep" and "cuda_flags" in group}
    assert ep_flags == {True, False}
    assert any(entry.get("env") for entry in data["layouts"])  # the env side of the gates is captured too


@pytest.mark.parametrize("case", _cuda_entries(), ids=_entry_id)
def test_cuda_gates_match_the_installed_cuda_communicator(case: tuple[str, dict]) -> None:
    """Each release's CudaCommunicator run on CPU by tools/vllm_layouts.py --cuda-communicator: its name, flag
    and env gates (custom all-reduce, symmetric memory and FlashInfer on TP only, symmetric memory on every
    group in 0.10.2; use_all2all and the manager's class on EP; PyNccl on every group, but EP in 0.10.2),
    against cuda_gates and decide for that release line."""
    line, entry = case
    layout, env = VLLMLayout(**entry["layout"]), entry.get("env", {})
    built = list(plan(layout, line).built_groups())
    decisions = decide(layout, line, env=env)
    assert [group.name for group in built] == [call["group_name"] for call in entry["groups"]]
    for group, call in zip(built, entry["groups"]):
        assert set(call["built_device_communicator"].values()) == (
            {"CudaCommunicator"} if group.builds_device_communicator else {None}), group.name
        if not group.builds_device_communicator:
            assert "cuda_flags" not in call, group.name
            continue
        flags = call["cuda_flags"]
        gates = cuda_gates(group, layout, line, env)
        assert flags["use_custom_allreduce"] == gates.use_custom_allreduce, group.name
        # 0.10.2 keeps no attribute: SymmMemCommunicator is constructed when the gate is open (cc:60 of 0.10.2)
        assert flags["use_torch_symm_mem" if line != "0.10" else "symm_mem_comm"] == gates.use_torch_symm_mem, group.name
        # before 0.33 CudaCommunicator has no FlashInfer all-reduce
        assert flags.get("use_flashinfer_allreduce", False) == gates.use_flashinfer_allreduce, group.name
        assert flags["use_all2all"] == gates.use_all2all, group.name
        mine = decisions.for_group(group.name)
        assert flags["pynccl_comm"] == mine.built(PYNCCL), group.name
        if line == "0.10":
            assert flags["use_pynccl"] == mine.built(PYNCCL), group.name
        manager = MANAGER_CLASS[all2all_backend(layout, line)] if mine.built(ALL2ALL_MANAGER) else None
        assert flags["all2all_manager"] == manager, group.name


def test_decisions_never_build_past_a_closed_gate() -> None:
    for layout in (TP8_EPLB, VLLMLayout(tp=4, dp=2, moe=True, disable_custom_all_reduce=True),
                   VLLMLayout(tp=2, pp=2, pcp=2, moe=True, enable_expert_parallel=True)):
        for entry in decide(layout).groups:
            if entry.group.is_alias or not entry.group.builds_device_communicator:
                continue
            gates = cuda_gates(entry.group, layout)
            assert not entry.built(CUSTOM_ALLREDUCE) or gates.use_custom_allreduce
            assert not entry.built(SYMM_MEM) or gates.use_torch_symm_mem
            assert not entry.built(FLASHINFER_ALLREDUCE) or gates.use_flashinfer_allreduce
            assert entry.built(ALL2ALL_MANAGER) == gates.use_all2all


def test_0_33_pynccl_needs_an_nccl_with_ncclcommsuspend() -> None:
    """vLLM 0.33.0's wrapper binds ncclCommSuspend (NCCL >= 2.29.7) and disables PyNccl when the library lacks it;
    0.11's wrapper binds no such symbol. An unknown NCCL ("": a CPU run) is taken to be one the release loads."""
    old = GPUFacts(nccl="2.28.9")
    decisions = decide(TP8_MOE, gpu=old)
    assert [e.group.name for e in decisions.groups if e.built(PYNCCL)] == []
    ep = decisions.for_group("ep").decision(PYNCCL)
    assert ep is not None and "ncclCommSuspend" in ep.reason and "pynccl.py:131-137" in ep.source
    assert [e.group.name for e in decide(TP8_MOE, gpu=GPUFacts(nccl="2.29.7")).groups if e.built(PYNCCL)] == ["tp", "ep"]
    assert [e.group.name for e in decide(TP8_MOE, "0.11-0.2x", gpu=old).groups if e.built(PYNCCL)] == ["tp", "ep"]
    assert _pynccl_groups(TP8_MOE) == ["tp", "ep"]

"""memprobe's reproduction of vLLM's groups against what the installed vLLM 0.33.0 built.

``fixtures/vllm-0.33.0-layouts.json`` was written by ``tools/vllm_layouts.py``: vLLM 0.33.0's own
``init_distributed_environment`` + ``ensure_model_parallel_initialized`` run on CPU with gloo, one process
per rank, recording every ``GroupCoordinator`` it created. ``plan`` must give the same groups in the same
order with the same rank lists, flags and ``new_group`` calls.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from memprobe.engines.vllm.layout import GROUP_ORDER, VLLMLayout, plan
from memprobe.errors import UsageError

FIXTURES = Path(__file__).parent / "fixtures"
#: The installed release each fixture captured, and the release line memprobe reproduces it with.
RELEASES = {"0.33.0": "0.33", "0.11.0": "0.11-0.2x", "0.10.2": "0.10"}


@lru_cache(maxsize=None)
def _fixture(release: str = "0.33.0") -> dict:
    return json.loads((FIXTURES / f"vllm-{release}-layouts.json").read_text())


def _entries() -> list[tuple[str, dict]]:
    return [(release, entry) for release in RELEASES for entry in _fixture(release)["layouts"]]


def _layout(entry: dict) -> VLLMLayout:
    return VLLMLayout(**entry["layout"])


# --------------------------------------------------------------------------- the fixtures themselves


@pytest.mark.parametrize("release", list(RELEASES))
def test_fixture_header_and_coverage(release: str) -> None:
    data = _fixture(release)
    assert data["provenance"]["vllm"] == release
    assert data["provenance"]["tool"] == "tools/vllm_layouts.py"
    layouts = [_layout(entry) for entry in data["layouts"]]
    assert len(layouts) >= 10 and len(set(layouts)) == len(layouts)
    assert max(layout.world_size for layout in layouts) == 8
    widths = ("tp", "pp", "dp", "dcp", "pcp") if release == "0.33.0" else ("tp", "pp", "dp", "dcp")
    for name in widths:
        assert any(getattr(layout, name) > 1 for layout in layouts), name
    for flag in ("enable_expert_parallel", "enable_eplb", "moe", "disable_custom_all_reduce"):
        assert {getattr(layout, flag) for layout in layouts} == {True, False}, flag
    assert any(layout.dp > 1 and not layout.moe for layout in layouts)  # a dense model with DP > 1
    assert all(entry["backend"] == "gloo" for entry in data["layouts"])


@pytest.mark.parametrize("release, entry", _entries(),
                         ids=lambda value: value if isinstance(value, str) else VLLMLayout(**value["layout"]).slug())
def test_plan_matches_vllm(release: str, entry: dict) -> None:
    layout = _layout(entry)
    newest = release == "0.33.0"
    the_plan = plan(layout, RELEASES[release])
    # 0.33 runs a dense model's DP ranks as independent engines (one replica captured); older ones in one world
    assert entry["world_size"] == (layout.group_world_size if newest else layout.world_size)
    built = list(the_plan.built_groups())
    recorded = entry["groups"]
    assert [group.name for group in built] == [call["group_name"] for call in recorded]
    for group, call in zip(built, recorded):
        assert [list(ranks) for ranks in group.rank_lists] == call["group_ranks"], group.name
        assert group.unique_name == call["unique_name"]
        assert group.use_device_communicator == call["use_device_communicator"], group.name
        assert group.use_message_queue_broadcaster == call["use_message_queue_broadcaster"], group.name
        if newest:  # parallel_state.py passes use_all2all to the coordinator
            assert group.use_all2all == call["use_all2all"], group.name
        else:  # before 0.33 the communicator decides it ("ep" in its name and DP > 1), on every rank alike
            assert set(call["communicator_use_all2all"].values()) == (
                {group.use_all2all} if group.builds_device_communicator else {None}), group.name
        assert group.new_group_calls == call["new_group_calls"], group.name
        # On CPU vLLM builds its platform's communicator where CudaCommunicator would be: the decision
        # whether a group gets one at all is parallel_state.py's, and it is the same on every rank.
        assert set(call["built_device_communicator"].values()) == (
            {"DeviceCommunicatorBase"} if group.builds_device_communicator else {None}), group.name
        assert set(call["built_mq_broadcaster"].values()) == {group.builds_mq_broadcaster}, group.name
    # Module globals: absent groups stay None, aliases point at the coordinator they share; a release without a
    # global (0.11 has no _ETP, _PCP, _EPLB) plans no such group.
    calls = {call["group_name"]: index for index, call in enumerate(recorded)}
    assert {group.name for group in the_plan.groups} <= set(entry["globals"])
    for name, index in entry["globals"].items():
        if not the_plan.has_group(name):
            assert index is None, name
            continue
        group = the_plan.group(name)
        assert index == calls[group.alias_of or group.name], name


# --------------------------------------------------------------------------- worked examples


def _lists(layout: VLLMLayout, name: str) -> list[list[int]]:
    return [list(ranks) for ranks in plan(layout).group(name).rank_lists]


def test_tp2_pp2_dp2_moe() -> None:
    """The research notes' table, computed there with numpy from vLLM's formulas."""
    layout = VLLMLayout(tp=2, pp=2, dp=2, moe=True)
    assert _lists(layout, "tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert _lists(layout, "pp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert _lists(layout, "dp") == [[0, 4], [2, 6], [1, 5], [3, 7]]
    assert _lists(layout, "ep") == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_tp8_moe_ep_is_tp_and_eplb_only_with_the_flag() -> None:
    moe = VLLMLayout(tp=8, moe=True, enable_expert_parallel=True)
    assert _lists(moe, "ep") == _lists(moe, "tp") == [list(range(8))]
    assert not plan(moe).has_group("eplb")
    eplb = VLLMLayout(tp=8, moe=True, enable_expert_parallel=True, enable_eplb=True)
    assert _lists(eplb, "eplb") == [list(range(8))]
    assert [group.name for group in plan(eplb).groups] == list(GROUP_ORDER)


def test_dense_has_no_ep_and_its_dp_ranks_are_separate_engines() -> None:
    dense = VLLMLayout(tp=2, pp=2, dp=2)
    assert not plan(dense).has_group("ep")
    assert dense.replicas == 2 and dense.group_world_size == 4 and dense.world_size == 8
    assert _lists(dense, "dp") == [[0], [2], [1], [3]]  # transpose(1, 4) of a DP-1 array: singletons, TP-major
    assert _lists(VLLMLayout(tp=2, pp=2, dp=2, moe=True), "dp") == [[0, 4], [2, 6], [1, 5], [3, 7]]


def test_singletons_are_built_without_device_communicators() -> None:
    the_plan = plan(VLLMLayout(tp=8, moe=True))
    for name in ("dcp", "pcp", "pp", "dp"):
        group = the_plan.group(name)
        assert group.width == 1 and group.new_group_calls == 16
        assert not group.builds_device_communicator and not group.builds_mq_broadcaster
    assert the_plan.group("etp").alias_of == "tp" and the_plan.group("etp").new_group_calls == 0
    assert not the_plan.group("world").builds_device_communicator


def test_dcp_spans_pcp_then_tp() -> None:
    assert _lists(VLLMLayout(tp=2, pcp=2, dcp=4), "dcp") == [[0, 2, 1, 3]]
    assert _lists(VLLMLayout(tp=2, pcp=2, dcp=2), "dcp") == [[0, 2], [1, 3]]
    assert _lists(VLLMLayout(tp=4, dcp=2), "dcp") == [[0, 1], [2, 3]]


def test_every_rank_once_per_group() -> None:
    for layout in (VLLMLayout(tp=2, pp=2, dp=2, moe=True, enable_expert_parallel=True, enable_eplb=True),
                   VLLMLayout(tp=2, pp=2, pcp=2, dcp=2, moe=True)):
        for group in plan(layout).groups:
            ranks = sorted(rank for row in group.rank_lists for rank in row)
            assert ranks == list(range(layout.group_world_size)), group.name


def test_older_lines_build_ep_for_dense_models_and_span_dp() -> None:
    dense = VLLMLayout(tp=2, dp=2)
    old = plan(dense, "0.11-0.2x")
    assert [group.name for group in old.groups] == ["world", "tp", "dcp", "pp", "dp", "ep"]
    assert [list(r) for r in old.group("ep").rank_lists] == [[0, 1, 2, 3]]
    assert [list(r) for r in old.group("dp").rank_lists] == [[0, 2], [1, 3]]
    # with PCP 1 the 0.33 formulas give the same lists as 0.11's 4-D array
    moe = VLLMLayout(tp=2, pp=2, dp=2, dcp=2, moe=True)
    for name in ("tp", "dcp", "pp", "dp", "ep"):
        assert plan(moe, "0.10").group(name).rank_lists == plan(moe).group(name).rank_lists, name
    with pytest.raises(UsageError, match="no prefill context parallelism"):
        plan(VLLMLayout(tp=2, pcp=2), "0.11-0.2x")
    with pytest.raises(UsageError, match="release line"):
        plan(dense, "0.9")


def test_use_all2all_follows_parallel_config() -> None:
    assert not VLLMLayout(tp=8, moe=True, enable_expert_parallel=True).use_all2all
    assert VLLMLayout(tp=4, dp=2, moe=True).use_all2all  # DP > 1
    assert VLLMLayout(tp=2, pcp=2, moe=True, enable_expert_parallel=True).use_all2all  # EP with PCP > 1
    assert not VLLMLayout(tp=2, pcp=2, moe=True).use_all2all
    assert not VLLMLayout(tp=2, dp=2).use_all2all  # dense DP: independent engines, DP 1 each
    assert VLLMLayout(tp=2, all2all_backend="pplx").effective_all2all_backend == "allgather_reducescatter"


# --------------------------------------------------------------------------- refusals (config/parallel.py of 0.33.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tp=0), "--tp must be a whole number >= 1"),
        (dict(tp=2, dp=-1), "--dp must be a whole number >= 1"),
        (dict(tp=2, pp=True), "--pp must be a whole number >= 1"),
        (dict(tp=2, moe="yes"), "moe must be true or false"),
        (dict(tp=2, all2all_backend="nccl"), "--all2all-backend 'nccl' is not one of"),
        (dict(tp=2, moe=True, enable_eplb=True), "--enable-eplb needs --enable-expert-parallel"),
        (dict(tp=1, moe=True, enable_expert_parallel=True, enable_eplb=True), "--enable-eplb needs TP, PCP or DP > 1"),
        (dict(tp=4, dcp=3), "--tp 4 must be divisible by --dcp 3"),
        (dict(tp=2, pcp=2, dcp=3), r"with --pcp 2, --dcp must be 1, PCP or TP x PCP \(\[1, 2, 4\]\); got 3"),
        (dict(tp=256, pp=256, dp=2), "memprobe plans at most 65536"),
    ],
)
def test_refusals(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        VLLMLayout(**kwargs)


def test_accepted_edges() -> None:
    VLLMLayout(tp=1, dp=2, moe=True, enable_expert_parallel=True, enable_eplb=True)  # DP alone makes EP wide
    VLLMLayout(tp=2, pcp=2, dcp=2)  # DCP spanning PCP
    VLLMLayout(tp=2, all2all_backend="naive")  # removed backends are accepted and replaced, as vLLM does


def test_flags_and_slug() -> None:
    layout = VLLMLayout(tp=8, moe=True, enable_expert_parallel=True, enable_eplb=True)
    assert layout.flags() == "--tp 8 --moe --enable-expert-parallel --enable-eplb"
    assert layout.slug() == "tp8-moe-ep-eplb"
    assert VLLMLayout(tp=4, dp=2).slug() == "tp4-dp2-dense"

"""memprobe's group plan and lean stack against what SGLang 0.5.23 really builds.

The fixture ``fixtures/sglang-0.5.23-layouts.json`` was written by
``tools/sglang_layouts.py``, which ran SGLang 0.5.23's own
``initialize_model_parallel`` (and ``init_model_parallel_group``) with recording
stubs; see that script's docstring to regenerate it. No torch, no GPU here.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import pytest

from memprobe.errors import ExitCode, UsageError
from memprobe.engines.sglang.layout import GROUP_ORDER, SGLangLayout as Layout, plan_groups
from memprobe.engines.sglang.stacks import FULL, LEAN

FIXTURE = Path(__file__).parent / "fixtures" / "sglang-0.5.23-layouts.json"
#: sha256 of sglang/srt/distributed/parallel_state.py in the sglang-0.5.23 wheel.
PARALLEL_STATE_SHA256 = "bd356b92933a4e5eb08f22cf3eda8b788cc09efbbb2fb421745803847b8d2f5c"


@functools.lru_cache(maxsize=1)
def _fixture() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def _entries() -> list[dict]:
    return _fixture()["layouts"]


def _divisor_pairs(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(1, n + 1) for b in range(1, n + 1) if n % (a * b) == 0]


def _lists(rank_lists) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(ranks) for ranks in rank_lists)


# --------------------------------------------------------------------------- the fixture itself


def test_fixture_header() -> None:
    data = _fixture()
    assert data["sglang_version"] == "0.5.23"
    assert data["parallel_state_sha256"] == PARALLEL_STATE_SHA256
    assert data["layout_count"] == len(data["layouts"]) > 1000
    assumptions = data["assumptions"]
    assert assumptions["module_switches"] == {
        "_ENABLE_CUSTOM_ALL_REDUCE": True,
        "_ENABLE_MSCCLPP": False,
        "_ENABLE_TORCH_SYMM_MEM_ALL_REDUCE": False,
    }
    assert assumptions["SYNC_TOKEN_IDS_ACROSS_TP"] is False
    assert assumptions["enable_symm_mem"] is False


def test_fixture_covers_every_small_layout() -> None:
    """Every tp<=8 shape at pp 1 and 2 is in the fixture, and each layout only once."""
    ids = [entry["id"] for entry in _entries()]
    assert len(ids) == len(set(ids))
    present = {tuple(sorted(entry["layout"].items())) for entry in _entries()}
    for tp, pp in itertools.product((1, 2, 3, 4, 6, 8), (1, 2)):
        for (ep, moe_dp), (attn_dp, attn_cp) in itertools.product(_divisor_pairs(tp), _divisor_pairs(tp)):
            layout = dict(tp=tp, ep=ep, pp=pp, moe_dp=moe_dp, attn_dp=attn_dp, attn_cp=attn_cp)
            assert tuple(sorted(layout.items())) in present, layout
    assert {entry["layout"]["tp"] for entry in _entries()} == {1, 2, 3, 4, 6, 8, 16}
    assert {entry["layout"]["pp"] for entry in _entries()} == {1, 2, 3, 4}


# --------------------------------------------------------------------------- memprobe == SGLang


@pytest.mark.parametrize("entry", _entries(), ids=lambda entry: entry["id"])
def test_plan_matches_sglang(entry: dict) -> None:
    layout = Layout(**entry["layout"])
    plan = plan_groups(layout)
    calls = entry["calls"]
    world = entry["world_size"]
    assert layout.world_size == world

    # Same groups, same order: world (from init_distributed_environment), then
    # SGLang's assignment order of the module globals.
    assert tuple(group.name for group in plan.groups) == ("world", *entry["assignment_order"]) == GROUP_ORDER

    world_group = plan.groups[0]
    assert world_group.rank_lists == (tuple(range(world)),)
    assert not world_group.is_alias

    # The groups memprobe builds are exactly SGLang's init_model_parallel_group calls, in order.
    built = [group for group in plan.groups[1:] if not group.is_alias]
    assert [group.name for group in built] == [call["group_name"] for call in calls]

    for group in plan.groups[1:]:
        call = calls[entry["object_of"][group.name]]
        # Same rank lists (for an alias: those of the coordinator it is the same object as).
        assert group.rank_lists == _lists(call["group_ranks"]), group.name
        # Same alias decision and target: the global SGLang assigned from.
        assert group.alias_of == entry["alias_map"].get(group.name), group.name
        if group.is_alias:
            target = plan.group(group.alias_of)
            while target.is_alias:  # e.g. moe_dp -> attn_cp -> tp
                target = plan.group(target.alias_of)
            assert target.name == call["group_name"], group.name
        else:
            assert call["group_name"] == group.name
            # The lean stack's flags are SGLang's, after its None-defaulting.
            assert LEAN.flags_for(group.name) == {
                "pynccl": call["use_pynccl"], "custom_allreduce": call["use_custom_allreduce"]
            }, group.name


def test_every_recorded_flag_pair_is_lean() -> None:
    """Across all layouts, each SGLang group name got one flag pair, and it is LEAN's."""
    seen: dict[str, set[tuple[bool, bool]]] = {}
    for entry in _entries():
        for call in entry["calls"]:
            seen.setdefault(call["group_name"], set()).add((call["use_pynccl"], call["use_custom_allreduce"]))
    assert set(seen) == set(GROUP_ORDER) - {"world"}
    for name, pairs in seen.items():
        flags = LEAN.flags_for(name)
        assert pairs == {(flags["pynccl"], flags["custom_allreduce"])}, name


def test_full_differs_from_lean_only_on_moe_ep_and_moe_tp() -> None:
    for name in GROUP_ORDER:
        if name in ("moe_ep", "moe_tp"):
            assert LEAN.flags_for(name) == {"pynccl": False, "custom_allreduce": False}
            assert FULL.flags_for(name) == {"pynccl": True, "custom_allreduce": True}
        else:
            assert FULL.flags_for(name) == LEAN.flags_for(name), name
    assert LEAN.flags_for("world") == {"pynccl": False, "custom_allreduce": False}


# --------------------------------------------------------------------------- worked examples (notes §2.3)


def _singletons(n: int) -> tuple[tuple[int, ...], ...]:
    return tuple((r,) for r in range(n))


def _rank_list_count(plan) -> int:
    return sum(len(group.rank_lists) for group in plan.built_groups())


def test_tp8() -> None:
    plan = plan_groups(Layout(tp=8))
    assert plan.group("world").rank_lists == (tuple(range(8)),)
    assert plan.group("tp").rank_lists == (tuple(range(8)),)
    assert plan.group("attn_cp").rank_lists == _singletons(8)
    assert plan.group("attention_tp").alias_of == "tp"
    assert plan.group("moe_dp").rank_lists == _singletons(8)
    assert plan.group("moe_ep").rank_lists == _singletons(8)
    assert plan.group("moe_tp").alias_of == "tp"
    assert plan.group("pp").rank_lists == _singletons(8)
    assert plan.group("self_pp").rank_lists == _singletons(8)
    assert _rank_list_count(plan) == 42
    assert sum(group.new_group_calls for group in plan.groups) == 84


def test_tp8_ep4() -> None:
    plan = plan_groups(Layout(tp=8, ep=4))
    assert plan.group("tp").rank_lists == (tuple(range(8)),)
    assert plan.group("attention_tp").alias_of == "tp"
    assert plan.group("moe_dp").rank_lists == _singletons(8)
    assert plan.group("moe_ep").rank_lists == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert plan.group("moe_tp").rank_lists == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert _rank_list_count(plan) == 40
    assert sum(group.new_group_calls for group in plan.groups) == 80
    # Per rank: rank 0 is in tp (full stack), moe_ep [0,2,4,6] and moe_tp [0,1] (both lean).
    assert plan.group("moe_ep").ranks_of(0) == (0, 2, 4, 6)
    assert plan.group("moe_tp").ranks_of(0) == (0, 1)
    assert LEAN.communicators_for(plan.group("tp")) == {"pynccl": True, "custom_allreduce": True}
    for name in ("moe_ep", "moe_tp"):
        assert LEAN.communicators_for(plan.group(name)) == {"pynccl": False, "custom_allreduce": False}
        assert FULL.communicators_for(plan.group(name)) == {"pynccl": True, "custom_allreduce": True}


def test_tp4_ep2() -> None:
    plan = plan_groups(Layout(tp=4, ep=2))
    assert plan.group("world").rank_lists == ((0, 1, 2, 3),)
    assert plan.group("tp").rank_lists == ((0, 1, 2, 3),)
    assert plan.group("attn_cp").rank_lists == _singletons(4)
    assert plan.group("moe_dp").rank_lists == _singletons(4)
    assert plan.group("moe_ep").rank_lists == ((0, 2), (1, 3))
    assert plan.group("moe_tp").rank_lists == ((0, 1), (2, 3))
    assert plan.group("pp").rank_lists == _singletons(4)
    assert _rank_list_count(plan) == 22
    assert sum(group.new_group_calls for group in plan.groups) == 44


def test_tp8_ep8() -> None:
    plan = plan_groups(Layout(tp=8, ep=8))
    assert plan.group("moe_ep").alias_of == "tp"
    assert plan.group("moe_ep").rank_lists == (tuple(range(8)),)
    assert plan.group("moe_tp").rank_lists == _singletons(8)
    assert not plan.group("moe_tp").is_alias


def test_tp8_attn_dp8_ep8() -> None:
    plan = plan_groups(Layout(tp=8, attn_dp=8, ep=8))
    assert plan.group("attention_tp").rank_lists == _singletons(8)
    assert not plan.group("attention_tp").is_alias


def test_tp4_pp2_ep2() -> None:
    plan = plan_groups(Layout(tp=4, pp=2, ep=2))
    assert plan.group("world").rank_lists == (tuple(range(8)),)
    assert plan.group("tp").rank_lists == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert plan.group("moe_ep").rank_lists == ((0, 2), (1, 3), (4, 6), (5, 7))
    assert plan.group("moe_tp").rank_lists == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert plan.group("pp").rank_lists == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert plan.group("self_pp").rank_lists == _singletons(8)


def test_sglang_docstring_examples() -> None:
    """The two examples in initialize_model_parallel's docstring."""
    plan = plan_groups(Layout(tp=2, pp=4))
    assert plan.group("tp").rank_lists == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert plan.group("pp").rank_lists == ((0, 2, 4, 6), (1, 3, 5, 7))
    plan = plan_groups(Layout(tp=8, attn_cp=2, moe_dp=2, ep=4))
    assert plan.group("tp").rank_lists == (tuple(range(8)),)
    assert plan.group("attn_cp").rank_lists == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert plan.group("attention_tp").rank_lists == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert plan.group("moe_ep").rank_lists == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert plan.group("moe_dp").rank_lists == ((0, 4), (1, 5), (2, 6), (3, 7))


def test_moe_dp_aliases_attn_cp_when_cp_is_wider() -> None:
    plan = plan_groups(Layout(tp=8, attn_cp=4, moe_dp=2, ep=2))
    moe_dp = plan.group("moe_dp")
    assert moe_dp.alias_of == "attn_cp"
    assert moe_dp.rank_lists == plan.group("attn_cp").rank_lists
    # attn_cp == tp: attn_cp is tp, and moe_dp still names attn_cp (SGLang: _MOE_DP = _ATTN_CP).
    plan = plan_groups(Layout(tp=4, attn_cp=4))
    assert plan.group("attn_cp").alias_of == "tp"
    assert plan.group("moe_dp").alias_of == "attn_cp"
    assert plan.group("moe_dp").rank_lists == ((0, 1, 2, 3),)


# --------------------------------------------------------------------------- singletons and partitions


def test_singleton_groups_are_built_but_get_no_communicators() -> None:
    plan = plan_groups(Layout(tp=4))  # ep=1, pp=1: moe_ep, pp, self_pp are 4 singleton lists
    for name in ("attn_cp", "moe_dp", "moe_ep", "pp", "self_pp"):
        group = plan.group(name)
        assert not group.is_alias, name
        assert group.rank_lists == _singletons(4), name
        assert group.width == 1
        assert group.new_group_calls == 8
        assert LEAN.communicators_for(group) == {"pynccl": False, "custom_allreduce": False}
        assert FULL.communicators_for(group) == {"pynccl": False, "custom_allreduce": False}
    for name in ("attention_tp", "moe_tp"):
        group = plan.group(name)
        assert group.alias_of == "tp"
        assert group.new_group_calls == 0
        assert LEAN.communicators_for(group) == {"pynccl": False, "custom_allreduce": False}


def test_tp1_everything_but_pp_aliases_tp() -> None:
    plan = plan_groups(Layout(tp=1, pp=3))
    assert plan.group("tp").rank_lists == ((0,), (1,), (2,))
    for name in ("attn_cp", "attention_tp", "moe_dp", "moe_ep", "moe_tp"):
        assert plan.group(name).alias_of == "tp", name
    assert plan.group("pp").rank_lists == ((0, 1, 2),)
    assert plan.group("self_pp").rank_lists == _singletons(3)


def _all_layouts(tps, pps):
    for tp, pp in itertools.product(tps, pps):
        for (ep, moe_dp), (attn_dp, attn_cp) in itertools.product(_divisor_pairs(tp), _divisor_pairs(tp)):
            yield Layout(tp=tp, ep=ep, pp=pp, moe_dp=moe_dp, attn_dp=attn_dp, attn_cp=attn_cp)


def test_every_rank_once_per_group() -> None:
    """Each group's lists partition the world into equal-width lists; widths are the layout's."""
    for layout in _all_layouts(range(1, 13), (1, 2, 3)):
        plan = plan_groups(layout)
        world = layout.world_size
        expected_width = {
            "world": world,
            "tp": layout.tp,
            "attn_cp": layout.attn_cp,
            "attention_tp": layout.attn_tp,
            "moe_dp": max(layout.moe_dp, layout.attn_cp),
            "moe_ep": layout.ep,
            "moe_tp": layout.moe_tp,
            "pp": layout.pp,
            "self_pp": 1,
        }
        for group in plan.groups:
            ranks = sorted(itertools.chain.from_iterable(group.rank_lists))
            assert ranks == list(range(world)), (layout, group.name)
            assert {len(lst) for lst in group.rank_lists} == {expected_width[group.name]}, (layout, group.name)
            for rank in range(world):
                assert rank in group.ranks_of(rank)
        # Every TP-derived group stays inside one TP block; pp lists take one rank per block.
        for group in plan.groups:
            if group.name in ("tp", "attn_cp", "attention_tp", "moe_dp", "moe_ep", "moe_tp"):
                for ranks in group.rank_lists:
                    assert len({r // layout.tp for r in ranks}) == 1, (layout, group.name)
        for ranks in plan.group("pp").rank_lists:
            assert [r // layout.tp for r in ranks] == list(range(layout.pp))


def test_ranks_of_unknown_rank() -> None:
    with pytest.raises(KeyError):
        plan_groups(Layout(tp=2)).group("tp").ranks_of(2)


# --------------------------------------------------------------------------- invalid layouts


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(tp=4, ep=8),  # ep > tp
        dict(tp=2, ep=4, moe_dp=1),
        dict(tp=6, ep=4),  # does not divide
        dict(tp=8, ep=3),
        dict(tp=8, ep=4, moe_dp=4),  # ep*moe_dp = 16 > 8
        dict(tp=12, ep=4, moe_dp=2),  # 8 does not divide 12
        dict(tp=8, attn_dp=3),
        dict(tp=8, attn_dp=2, attn_cp=8),
        dict(tp=6, attn_cp=4),
        dict(tp=0),
        dict(tp=4, ep=0),
        dict(tp=4, pp=0),
        dict(tp=4, moe_dp=0),
        dict(tp=4, attn_dp=0),
        dict(tp=4, attn_cp=0),
        dict(tp=-4),
        dict(tp=4, ep=-2),
        dict(tp=4, pp=-1),
        dict(tp=True),
        dict(tp=4, ep=True),
        dict(tp=4, pp=False),
        dict(tp=4.0),
        dict(tp="4"),
        dict(tp=4, attn_cp=None),
    ],
    ids=lambda kwargs: ",".join(f"{k}={v!r}" for k, v in kwargs.items()),
)
def test_invalid_layouts_raise_usage_error(kwargs: dict) -> None:
    with pytest.raises(UsageError) as caught:
        Layout(**kwargs)
    assert caught.value.exit_code == ExitCode.USAGE
    assert str(caught.value)

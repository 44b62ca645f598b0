"""`memprobe plan`: the JSON document, the text table, and planning at scale."""

from __future__ import annotations

import io
import json
import time

from memprobe import api
from memprobe.commands.plan import _stream_plan_json
from memprobe.engines.sglang.layout import SGLangLayout as Layout, plan_groups
from memprobe.engines.sglang.stacks import FULL, LEAN


def test_plan_json_is_one_document_in_the_documented_shape(memprobe):
    result = memprobe("plan", "--tp", "8", "--ep", "4", "--stack", "full", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["world_size"] == 8
    assert document["layout"] == {"tp": 8, "ep": 4, "pp": 1, "moe_dp": 1, "attn_dp": 1, "attn_cp": 1}
    assert document["stack"] == "full"
    names = [group["name"] for group in document["groups"]]
    assert names == ["world", "tp", "attn_cp", "attention_tp", "moe_dp", "moe_ep", "moe_tp", "pp", "self_pp"]
    groups = {group["name"]: group for group in document["groups"]}
    assert {key: value for key, value in groups["tp"].items() if key != "decisions"} == {
        "name": "tp", "ranks": [[0, 1, 2, 3, 4, 5, 6, 7]], "alias_of": None,
        "communicators": {"pynccl": True, "custom_allreduce": True}}
    # what the group builds on the estimate's default facts, and that they are assumed
    assert document["assumed"]["gpu_model"] == "NVIDIA H200" and "ASSUMED" in document["assumed"]["note"]
    (tp,) = groups["tp"]["decisions"]
    assert (tp["nodes"], tp["lists"]) == (1, 1)
    assert {kind: d["verdict"] for kind, d in tp["communicators"].items()} == {"pynccl": "built",
                                                                              "custom_allreduce": "built"}
    (pp,) = groups["pp"]["decisions"]
    assert pp["lists"] == 8 and pp["communicators"]["pynccl"]["verdict"] == "width-1"
    assert groups["attention_tp"]["alias_of"] == "tp" and groups["attention_tp"]["ranks"] == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert groups["moe_ep"]["ranks"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert groups["moe_ep"]["communicators"] == {"pynccl": True, "custom_allreduce": True}
    assert groups["pp"]["ranks"] == [[r] for r in range(8)]


def test_plan_lean_turns_off_the_moe_communicators(memprobe):
    document = json.loads(memprobe("plan", "--tp", "4", "--ep", "2", "--json").stdout)
    groups = {group["name"]: group for group in document["groups"]}
    assert groups["moe_ep"]["communicators"] == {"pynccl": False, "custom_allreduce": False}
    assert groups["moe_tp"]["communicators"] == {"pynccl": False, "custom_allreduce": False}


def test_plan_table_names_every_group(memprobe):
    result = memprobe("plan", "--tp", "4", "--pp", "2", "--ep", "2")
    assert result.returncode == 0, result.stderr
    for name in ("world", "tp", "moe_ep", "moe_tp", "pp", "self_pp"):
        assert name in result.stdout
    assert "[0,4] [1,5] [2,6] [3,7]" in result.stdout  # pp lists of --tp 4 --pp 2


def test_plan_for_4096_ranks_streams_in_under_a_second():
    started = time.perf_counter()
    stream = io.StringIO()
    _stream_plan_json(api.plan(tp=8, pp=512, ep=4, stack="lean"), stream)
    elapsed = time.perf_counter() - started
    document = json.loads(stream.getvalue())
    assert document["world_size"] == 4096
    assert len(document["groups"][-1]["ranks"]) == 4096
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_full_and_lean_differ_only_on_the_moe_groups():
    plan = plan_groups(Layout(tp=8, ep=4))
    for group in plan.groups:
        if group.name in ("moe_ep", "moe_tp"):
            assert FULL.communicators_for(group) != LEAN.communicators_for(group)
        else:
            assert FULL.communicators_for(group) == LEAN.communicators_for(group)


def _table(**options) -> str:
    from memprobe.reports.plan_table import render_plan

    stream = io.StringIO()
    render_plan(api.plan(**options), stream, width=200)
    return stream.getvalue()


def _cells(table: str, group: str, ranks: str) -> str:
    """The row's text after its rank lists: one cell per communicator kind, then the new_group calls."""
    line = next(line for line in table.splitlines() if line.startswith(group + " "))
    return " ".join(line.split(ranks, 1)[1].split())


def test_plan_table_shows_what_each_stack_decides_not_its_flags():
    """vllm and shared-ep ask for the same communicators (the same flags) and decide differently on EP."""
    vllm = _table(tp=8, moe=True, engine="vllm-ref", stack="vllm")
    shared = _table(tp=8, moe=True, engine="vllm-ref", stack="shared-ep")
    every = "[0,1,2,3,4,5,6,7]"
    for table in (vllm, shared):
        assert "decisions ASSUMED as the estimate assumes by default, no GPU looked at: NVIDIA H200 (sm 9.0)" in table
        # pynccl, symmetric memory, FlashInfer, custom all-reduce, its MNNVL stage, all2all, MQ broadcaster, calls
        assert _cells(table, "tp", every) == "built built built built built off built 2"
    assert _cells(vllm, "ep", every).startswith("built off off off off no [1] off")
    assert _cells(shared, "ep", every).startswith("no [1] off off off off no [2] off")
    assert "[1] ep pynccl: shared-ep: same ranks as TP, reuses TP's PyNccl" in shared
    assert "reuses TP's PyNccl" not in vllm
    assert _cells(vllm, "dp", "(+4 more)").startswith("width 1 off")


def test_plan_table_decides_sglang_s_groups_through_the_same_interface():
    full, lean = _table(tp=8, ep=4, stack="full"), _table(tp=8, ep=4, stack="lean")
    assert _cells(full, "moe_ep", "[1,3,5,7]") == "built built 4"
    assert _cells(lean, "moe_ep", "[1,3,5,7]") == "off off 4"
    assert "env preset sglang" in full


def test_vllm_plan_json_follows_the_plan_schema():
    from test_json_schemas import problems

    stream = io.StringIO()
    _stream_plan_json(api.plan(tp=4, dp=2, moe=True, enable_expert_parallel=True, engine="vllm-ref",
                               stack="vllm:0.11"), stream)
    document = json.loads(stream.getvalue())
    assert problems("plan", document) == []
    ep = next(group for group in document["groups"] if group["name"] == "ep")
    assert ep["decisions"][0]["communicators"]["all2all_manager"]["verdict"] == "built"  # DP > 1
    assert document["assumed"]["env_preset"] == "vllm"


def test_plan_table_splits_a_decision_where_lists_on_more_nodes_decide_otherwise():
    """--tp 6 --pp 2 on nodes of 8: one TP list on one node, one across two (custom all-reduce: one node only)."""
    table = _table(tp=6, pp=2, moe=True, engine="vllm-ref", stack="vllm")
    first, second = table.split("\ntp ", 1)[1].splitlines()[:2]
    # pynccl, symmetric memory, FlashInfer decide alike on both lists: one word; custom all-reduce and its stage not
    assert " ".join(first.split("[6,7,8,9,10,11]", 1)[1].split()).startswith("built built no [1] 1 node: built")
    assert " ".join(second.split()) == "2 nodes: no [2] 2 nodes: no [3]"
    assert "[2] tp custom_allreduce: multi-node group without MNNVL" in table


def test_a_narrow_console_folds_headers_never_a_decision():
    from memprobe.reports.plan_table import render_plan

    stream = io.StringIO()
    render_plan(api.plan(tp=8, moe=True, engine="vllm-ref", stack="shared-ep"), stream, width=80)
    rows = {line.split()[0]: line for line in stream.getvalue().splitlines() if line[:1].isalpha()}
    assert rows["t"].split().count("built") == 6  # group names are cut (t for tp), decisions are not
    assert "no [1]" in rows["e"] and "width 1" in rows["d"]

"""`memprobe plan`: the JSON document, the text table, and planning at scale."""

from __future__ import annotations

import io
import json
import time

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
    assert groups["tp"] == {"name": "tp", "ranks": [[0, 1, 2, 3, 4, 5, 6, 7]], "alias_of": None,
                            "communicators": {"pynccl": True, "custom_allreduce": True}}
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
    _stream_plan_json(plan_groups(Layout(tp=8, pp=512, ep=4)), LEAN, stream)
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

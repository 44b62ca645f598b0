"""A plug-in engine's own layout field reaches the command line (``--layout NAME=VALUE``) and the API
(``layout=("NAME=VALUE",)``) with no edit of memprobe's core: the toy engine's ``rings`` (tests/engines/toy, a
field whose flag_field declares no flag) multiplies its world; a name its layout has not, a value of the wrong
kind, a field that has its own flag, are one line and exit 2."""

from __future__ import annotations

import json

import pytest

from conftest import run_memprobe

from memprobe import api
from memprobe.errors import UsageError

TOY = {"MEMPROBE_ENGINES": "tests.engines.toy:ENGINE"}


def test_the_toy_s_rings_width_plans_from_the_command_line(tmp_path):
    planned = run_memprobe("plan", "--engine", "toy-ref", "--tp", "2", "--layout", "rings=3", "--json",
                           cwd=tmp_path, env=TOY)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["world_size"] == 6 and plan["layout"] == {"tp": 2, "rings": 3}
    assert [group["ranks"] for group in plan["groups"]] == [[[0, 1, 2, 3, 4, 5]], [[0, 1], [2, 3], [4, 5]]]
    estimated = run_memprobe("estimate", "--engine", "toy-ref", "--tp", "2", "--layout", "rings=2",
                             cwd=tmp_path, env={**TOY, "COLUMNS": ""})
    assert estimated.returncode == 0, estimated.stderr
    assert "--tp 2 --layout rings=2" in estimated.stdout and "of 4" in estimated.stdout


@pytest.mark.parametrize("given, message", [
    ("ring=2", "--layout ring=2: this engine's layout has no 'ring' (its fields: tp, rings)"),
    ("rings=two", "--layout rings=two: rings must be a whole number >= 1"),
    ("rings", "--layout 'rings' is not NAME=VALUE"),
    ("tp=4", "--layout tp=4: give tp as --tp"),
    ("rings=0", "--layout rings must be a whole number >= 1, got 0"),
])
def test_a_bad_layout_field_is_one_line_and_exit_2(tmp_path, given, message):
    refused = run_memprobe("plan", "--engine", "toy-ref", "--tp", "2", "--layout", given, cwd=tmp_path, env=TOY)
    assert refused.returncode == 2 and refused.stderr.strip() == f"memprobe: error: {message}", refused.stderr


def test_the_api_takes_the_same_field_and_refuses_it_for_an_engine_without_it(monkeypatch):
    from memprobe import engines

    monkeypatch.setattr(engines, "_loaded", dict(engines._loaded))  # the toy stays registered in this test only
    monkeypatch.setenv(*next(iter(TOY.items())))
    planned = api.plan(tp=2, layout=("rings=2",), engine="toy-ref")
    assert planned.groups.layout.world_size == 4 and [g.name for g in planned.groups.groups] == ["world", "pairs"]
    assert api.estimate(tp=2, layout=("rings=2",), engine="toy-ref").runs[0].run.record.world_size == 4
    with pytest.raises(UsageError, match="engine's layout has no 'rings'"):
        api.plan(tp=2, layout=("rings=2",))  # SGLang's layout has no rings
    with pytest.raises(UsageError, match="--layout rings is given twice"):
        api.plan(tp=2, layout=("rings=2", "rings=3"), engine="toy-ref")

"""Engines are plug-ins: a test-only engine (tests/engines/toy: two groups, a communicator kind of its own with its
own size rule), registered by the one line below, goes through plan, run, compare, estimate, baseline and gate, and
shows in every export with its own kind; nothing outside its folder names it. Then the contract every registered
engine keeps, and the one place recorded decisions are read back."""

from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import ROOT, run_memprobe

TOY = {"MEMPROBE_ENGINES": "tests.engines.toy:ENGINE"}  # the toy engine's registration: its one line

jsonschema = pytest.importorskip("jsonschema", reason="the dev extra installs jsonschema: pip install -e '.[dev]'")


def _schema(name: str):
    return jsonschema.Draft202012Validator(json.loads((ROOT / "docs" / "schema" / f"{name}.schema.json").read_text()))


def _rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """ONE real CPU comparison of the toy engine (stacks on and off) with every export, and ONE run: the module's
    two torchrun launches."""
    folder = tmp_path_factory.mktemp("toy")
    compared = run_memprobe("compare", "--device", "cpu", "--engine", "toy-ref", "--tp", "2", "--quiet", "--run-id", "c",
                            "--csv", "long.csv", "--summary-csv", "summary.csv", "--json", "all.json",
                            "--markdown", "table.md", cwd=folder, env=TOY)
    ran = run_memprobe("run", "--device", "cpu", "--engine", "toy-ref", "--tp", "2", "--quiet", "--run-id", "r",
                       cwd=folder, env=TOY)
    return folder, compared, ran


def test_an_engine_nobody_registered_is_refused_in_one_line(tmp_path):
    result = run_memprobe("plan", "--engine", "toy-ref", "--tp", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "memprobe: error: --engine 'toy-ref': use one of sglang-ref, memprobe, sglang, vllm-ref, vllm"


def test_the_toy_plan_has_its_groups_kind_and_width_rule(tmp_path):
    result = run_memprobe("plan", "--engine", "toy-ref", "--tp", "4", "--json", cwd=tmp_path, env=TOY)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [(g["name"], g["ranks"], g["communicators"]) for g in plan["groups"]] == [
        ("world", [[0, 1, 2, 3]], {"scratch": False}), ("pairs", [[0, 1], [2, 3]], {"scratch": True})]
    assert _schema("plan").is_valid(plan)
    refused = run_memprobe("plan", "--engine", "toy-ref", "--tp", "2", "--ep", "2", cwd=tmp_path, env=TOY)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "memprobe: error: --ep is not a flag of engine toy-ref (its widths: --tp, --layout rings)"


@pytest.mark.e2e
def test_the_toy_kind_is_measured_by_its_own_builder_on_every_rank(toy):
    folder, compared, ran = toy
    assert compared.returncode == 0, compared.stderr
    assert ran.returncode == 0, ran.stderr
    for run_dir, built in ((folder / "memprobe-runs" / "c" / "tp2-on", True), (folder / "memprobe-runs" / "c" / "tp2-off", False),
                           (folder / "memprobe-runs" / "r", True)):
        rows = _rows(run_dir / "readings.csv")
        steps = [(row["group"], row["step"]) for row in rows if row["rank"] == "0"]
        assert steps[3:6] == [("pairs", "before"), ("pairs", "groups_created"), ("pairs", "scratch")]
        for rank in ("0", "1"):
            mine = [row for row in rows if row["rank"] == rank]
            scratch = next(i for i, row in enumerate(mine) if row["step"] == "scratch")
            added = int(mine[scratch]["primary_bytes"]) - int(mine[scratch - 1]["primary_bytes"])
            if built:  # 2 MiB of host memory, really touched by tests/engines/toy/builder.py
                assert mine[scratch]["status"] == "ok" and added >= 2 * 1024 * 1024 - 64 * 1024, added
            else:
                assert mine[scratch]["status"] == "skipped" and mine[scratch]["note"] == "skipped: not in stack"
        record = json.loads((run_dir / "run.json").read_text())
        assert record["engine"] == "toy-ref" and record["layout"] == {"tp": 2, "rings": 1}
        decision = "built (2097152 bytes planned)" if built else "skipped: not in stack"
        assert {info["rank"]: info["communicators"] for info in record["ranks"]} == {
            0: {"pairs": {"scratch": decision}}, 1: {"pairs": {"scratch": decision}}}


def _components(export, scenario: str) -> dict[int, dict]:
    """Per rank, the components a JSON export (schema 2) holds for ``scenario``: each rank's class's, through the
    export's rank-to-class ranges."""
    document = json.loads(export.read_text())
    entry = next(item for item in document["scenarios"] if item["name"] == scenario)
    return {rank: entry["classes"][index]["components"]
            for first, last, index in entry["rank_classes"] for rank in range(first, last + 1)}


@pytest.mark.e2e
def test_every_export_carries_the_toy_kind(toy):
    folder, compared, _ = toy
    assert compared.returncode == 0, compared.stderr
    long_rows = _rows(folder / "long.csv")
    assert {row["step"] for row in long_rows if row["group"] == "pairs"} >= {"groups_created", "scratch", "first_use"}
    document = json.loads((folder / "all.json").read_text())
    assert list(_schema("comparison").iter_errors(document)) == []
    assert _components(folder / "all.json", "tp2-on")[0]["pairs/scratch"] >= 2 * 1024 * 1024 - 64 * 1024
    summary = _rows(folder / "summary.csv")
    assert "pairs_init_bytes" in summary[0]
    markdown = (folder / "table.md").read_text()
    assert "groups created + scratch buffer" in markdown and "off saves on --tp 2" in markdown
    assert "off saves on --tp 2 (tp2-on minus tp2-off)" in compared.stdout


@pytest.mark.e2e
def test_a_toy_baseline_passes_its_gate_and_an_estimate_follows_the_toy_size_rule(toy, tmp_path):
    folder, compared, _ = toy
    assert compared.returncode == 0, compared.stderr
    made = run_memprobe("baseline", "update", "--from", str(folder / "memprobe-runs" / "c"), "--out", "b.json",
                        cwd=tmp_path, env=TOY)
    assert made.returncode == 0, made.stderr
    baseline = json.loads((tmp_path / "b.json").read_text())
    assert _schema("baseline").is_valid(baseline)
    assert "pairs/scratch" in baseline["scenarios"]["tp2-on"]["ranks"]["0"]
    gate = run_memprobe("gate", "--baseline", "b.json", "--results", str(folder / "memprobe-runs" / "c"), cwd=tmp_path, env=TOY)
    assert gate.returncode == 0, gate.stdout + gate.stderr

    estimated = run_memprobe("estimate", "--engine", "toy-ref", "--tp", "2", "--json", "e.json", cwd=tmp_path, env=TOY)
    assert estimated.returncode == 0, estimated.stderr
    from memprobe.estimate.torch_cache import CachingAllocator

    cache = CachingAllocator()
    cache.allocate(2 * 1024 * 1024)  # the toy's rule for a pair: 1 MiB per member, through torch's caching allocator
    assert _components(tmp_path / "e.json", "tp2-on")[0]["pairs/scratch"] == cache.reserved
    assert _components(tmp_path / "e.json", "tp2-off")[0]["pairs/scratch"] is None  # skipped: not in the stack, not 0

    (tmp_path / "toy.toml").write_text('[defaults]\nengine = "toy-ref"\n[[scenario]]\nname = "pairs"\ntp = 4\n')
    made = run_memprobe("baseline", "update", "--estimate", "--scenarios", "toy.toml", "--out", "e-base.json",
                        cwd=tmp_path, env=TOY)
    assert made.returncode == 0, made.stderr
    judged = run_memprobe("gate", "--baseline", "e-base.json", "--estimate", cwd=tmp_path, env=TOY)
    assert judged.returncode == 0, judged.stdout + judged.stderr


def test_readings_of_a_kind_no_registered_engine_has_are_damaged(monkeypatch):
    from memprobe.errors import DamagedInput
    from memprobe.model.records import READING_COLUMNS, readings_from_csv

    text = ",".join(READING_COLUMNS) + "\n0,0,scratch,pairs,ok,1,1,,,,0.0,\n"
    with pytest.raises(DamagedInput, match="unknown step 'scratch'"):
        readings_from_csv(text)
    monkeypatch.setenv(*next(iter(TOY.items())))
    assert readings_from_csv(text)[0].step == "scratch"


# ------------------------------------------------------------------------------ the contract of every engine


def _registered(monkeypatch):
    from memprobe import engines

    monkeypatch.setenv(*next(iter(TOY.items())))
    return engines.all_engines()


def test_every_engine_keeps_the_contract(monkeypatch):
    from memprobe.engines.api import Facts, Verdict

    for engine in _registered(monkeypatch):
        assert all(kind.label for kind in engine.kinds)
        assert engine.group_order[0] == "world"
        layout = engine.layout_type(**{engine.layout_type.field_names()[0]: 2})
        plan = engine.plan(layout)
        assert [group.name for group in plan.groups] == [n for n in engine.group_order if n in {g.name for g in plan.groups}]
        for stack in engine.stacks().values():
            for group in plan.groups:
                decisions = engine.decide(group, stack, Facts(width=group.width))
                assert [d.kind for d in decisions] == list(engine.kind_names)
                if group.builds_nothing:  # an alias or a width-1 group builds nothing, in every engine
                    assert not any(d.built for d in decisions)
                    assert stack.communicators_for(group) == {kind: False for kind in engine.kind_names}
                for decision in decisions:
                    if decision.built and not engine.kind(decision.kind).nccl:
                        assert all(a.nbytes > 0 and a.source for a in engine.sizes(decision, Facts(width=group.width)))
                    assert type(decision).from_text(decision.group, decision.kind, decision.text()) == decision \
                        or decision.verdict is Verdict.BUILT


def test_sglang_sizes_are_what_its_reference_builder_plans():
    from memprobe.engines.api import Decision, Facts, Verdict
    from memprobe.engines.sglang import ENGINE
    from memprobe.engines.sglang.sizes import V1Buffers, v2_workspace

    for width in (2, 4, 8):
        facts = Facts(width=width, capability=90, sm_count=132)
        v2 = ENGINE.sizes(Decision("tp", "custom_allreduce", Verdict.BUILT, implementation="v2"), facts)
        assert sum(a.nbytes for a in v2) == v2_workspace(width, 9, 0, 132).total_bytes
        v1 = ENGINE.sizes(Decision("tp", "custom_allreduce", Verdict.BUILT, implementation="v1"), facts)
        buffers = V1Buffers()
        assert sum(a.nbytes for a in v1) == buffers.meta_bytes + buffers.buffer_bytes + buffers.rank_data_bytes


def test_one_custom_allreduce_rule_for_the_worker_and_the_estimate():
    """The worker gathers facts, the estimate assumes them: the same pure rule decides (SGLang 0.5.23
    can_use_custom_all_reduce_v2 / _with_nvlink)."""
    from memprobe.engines.api import Facts
    from memprobe.engines.sglang.communicators import custom_allreduce_choice

    assert custom_allreduce_choice(Facts(width=8), "v2") == ("v2", "full NVLink, one node")
    assert custom_allreduce_choice(Facts(width=8), "v1") == ("v1", "v1 layout")
    assert custom_allreduce_choice(Facts(width=8, nodes=2), "v2") == (None, "group spans several nodes")
    assert custom_allreduce_choice(Facts(width=4, full_nvlink=False), "v2") == (
        None, "v2: GPUs not all NVLink-connected; v1: more than two GPUs without full NVLink")
    assert custom_allreduce_choice(Facts(width=2, full_nvlink=False), "v2")[0] == "v1"
    assert custom_allreduce_choice(Facts(width=3, capability=90), "v2") == ("v2", "full NVLink, one node")
    assert custom_allreduce_choice(Facts(width=12), "v2") == (
        None, "v2: world size 12 not in [2, 3, 4, 5, 6, 7, 8]; v1: world size 12 not in [2, 4, 6, 8]")


def test_every_committed_decision_reads_back_as_the_typed_value_that_writes_it():
    """run.json keeps decisions as words (committed files render byte-identically); the reference engine's and the
    estimate's words all parse into a Decision that writes the same word."""
    from memprobe.engines.api import Decision, Verdict

    seen = set()
    for path in sorted((ROOT / "results").rglob("run.json")):
        record = json.loads(path.read_text())
        if record.get("engine") != "memprobe":
            continue  # the installed SGLang records its own coordinator's attributes
        for info in record["ranks"]:
            for group, kinds in info["communicators"].items():
                for kind, text in kinds.items():
                    assert Decision.from_text(group, kind, text).text() == text, (path, text)
                    seen.add(Decision.from_text(group, kind, text).verdict)
    assert seen >= {Verdict.BUILT, Verdict.OFF, Verdict.WIDTH_1}


def test_sglang_ref_is_the_old_memprobe_engine_with_the_same_identity():
    from memprobe.engines.sglang.layout import SGLangLayout
    from memprobe.model.scenario import Scenario

    old, new = (Scenario(name="s", layout=SGLangLayout(tp=4, ep=2), engine=name) for name in ("memprobe", "sglang-ref"))
    assert new.engine == "memprobe" and new.definition() == old.definition()
    assert new.definition_hash() == old.definition_hash()
    for baseline in sorted((ROOT / "configs" / "baselines").glob("*.json")):  # committed hashes still hold
        for name, scenario in json.loads(baseline.read_text())["scenarios"].items():
            rebuilt = Scenario.from_definition(scenario["definition"], str(baseline), name=name)
            assert rebuilt.definition_hash() == scenario["definition_hash"], (baseline, name)

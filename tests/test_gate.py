"""The CI memory-regression gate: baseline files, judging, renderers and the CLI.

Inputs are synthetic runs from tests/support.py (a cost model, not measurements), so every
expected number below follows from DEFAULT_COSTS: pynccl 484 MiB, custom all-reduce 38 MiB,
first use 486 MiB, CUDA context 522 MiB.

Golden files live in tests/golden/gate/; regenerate with MEMPROBE_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree

import pytest
from unittest import mock

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from support import ENVIRONMENT, MiB, headline_scenarios, synthetic_comparison, synthetic_run, write_comparison  # noqa: E402

from memprobe.gate.baseline import (  # noqa: E402
    ThresholdRule,
    build_baseline,
    load_baseline,
    parse_document,
    write_baseline,
)
from memprobe import cli as memprobe_cli  # noqa: E402
from memprobe.launch.options import LaunchOptions  # noqa: E402
from memprobe.errors import ExitCode, MeasurementError, UsageError  # noqa: E402
from memprobe.gate.judge import judge  # noqa: E402
from memprobe.gate.render import build_junit_xml, render_lines, render_markdown, render_table  # noqa: E402
from memprobe.units import mib_precise  # noqa: E402
from memprobe.gate.thresholds import Limit, parse_size, parse_threshold_spec, resolve_limit  # noqa: E402
from memprobe.model.records import Failure  # noqa: E402
from memprobe.model.comparison import Comparison, ScenarioRun  # noqa: E402
from memprobe.model.scenario import Scenario, ScenarioSet  # noqa: E402
from memprobe.engines.sglang import ENGINE  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "gate"
LEAN = "tp4-ep2-lean"


# --------------------------------------------------------------------------- helpers


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """Run in tmp_path so paths in output are short and stable (baseline.json, runs/current)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    for name in list(os.environ):
        if name.startswith("MEMPROBE_") and name != "MEMPROBE_UPDATE_GOLDEN":
            monkeypatch.delenv(name)
    return tmp_path


def scenarios() -> ScenarioSet:
    return headline_scenarios()


def current(overrides: dict[str, dict] | None = None, drop: tuple[str, ...] = ()) -> Comparison:
    """The headline comparison; ``overrides[name]`` are synthetic_run kwargs for that scenario."""
    runs = []
    for scenario in scenarios().scenarios:
        if scenario.name in drop:
            continue
        runs.append(ScenarioRun(scenario, synthetic_run(scenario, **(overrides or {}).get(scenario.name, {}))))
    return Comparison(comparison_id="current", baseline="tp4", runs=runs)


def lean_reverted() -> ScenarioRun:
    """tp4-ep2-lean whose moe_ep/moe_tp build pynccl and custom all-reduce again (sglang PR #22515 undone)."""
    lean = scenarios().get(LEAN)
    run = synthetic_run(scenarios().get("tp4-ep2-full"))
    run.record = replace(run.record, stack=ENGINE.resolve_stack("lean").as_dict(), scenario=LEAN, run_id="synthetic-reverted",
                         definition=lean.definition())
    return ScenarioRun(lean, run)


def with_run(comparison: Comparison, item: ScenarioRun) -> Comparison:
    runs = [item if r.scenario.name == item.scenario.name else r for r in comparison.runs]
    return Comparison(comparison_id=comparison.comparison_id, baseline=comparison.baseline, runs=runs)


def make_baseline(path: Path = Path("baseline.json"), thresholds: dict | None = None):
    document = build_baseline(synthetic_comparison(), thresholds=thresholds)
    write_baseline(path, document)
    return load_baseline(path)


def thresholds(**extra) -> dict:
    block = {"default": {"relative": 0.05, "absolute_bytes": 64 * MiB}, "metrics": {}, "scenarios": {}}
    block.update(extra)
    return block


def lines_of(result) -> list[str]:
    stream = io.StringIO()
    render_lines(result, stream)
    return stream.getvalue().splitlines()


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MEMPROBE_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"missing golden file {path}; run with MEMPROBE_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file (MEMPROBE_UPDATE_GOLDEN=1 to accept)"


# --------------------------------------------------------------------------- baseline files


def test_baseline_is_deterministic_and_integer(workdir):
    first = build_baseline(synthetic_comparison())
    assert write_baseline("a.json", first) is True
    assert write_baseline("a.json", build_baseline(synthetic_comparison())) is False  # unchanged
    write_baseline("b.json", build_baseline(synthetic_comparison()))
    assert Path("a.json").read_bytes() == Path("b.json").read_bytes()
    text = Path("a.json").read_text()
    assert not re.search(r"\d{4}-\d\d-\d\dT", text) and "created_utc" not in text  # no timestamps anywhere
    document = json.loads(text)
    assert list(document) == sorted(document)
    assert document["schema_version"] == 1 and document["memprobe_baseline"] is True
    ranks = document["scenarios"][LEAN]["ranks"]
    assert sorted(ranks) == ["0", "1", "2", "3"]
    assert ranks["3"]["moe_ep/pynccl"] == 0
    assert ranks["0"]["tp/pynccl"] == 484 * MiB
    assert all(type(v) is int for r in ranks.values() for v in r.values())


def test_baseline_holds_environment_key_and_definition(workdir):
    baseline = make_baseline()
    stored = baseline.scenarios[LEAN]
    assert stored.definition_hash == scenarios().get(LEAN).definition_hash()
    assert stored.scenario() == scenarios().get(LEAN)
    assert stored.environment_key == {
        "gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": 4, "driver": "580.159.04", "cuda": "13.0",
        "torch": "2.11.0+cu130", "nccl": "2.28.9",
        "nccl_env": {"NCCL_CUMEM_ENABLE": "0", "NCCL_NVLS_ENABLE": "0"},
        "sampling_mode": "process", "nvml_memory_api": "v2", "memprobe": "0.1.0",
    }  # host and python are not part of the key
    assert baseline.scenario_set([LEAN, "tp4"]).scenarios == (scenarios().get("tp4"), scenarios().get(LEAN))


def test_incomplete_run_makes_no_baseline(workdir):
    comparison = synthetic_comparison()
    run = comparison.runs[0].run
    run.record = replace(run.record, status="incomplete", failure=Failure(2, "tp", "pynccl", "NCCL error"))
    with pytest.raises(MeasurementError, match="rank 2 failed at tp/pynccl"):
        build_baseline(comparison)


def _corrupt_cases():
    def edit(fn):
        def apply(path: Path) -> None:
            document = json.loads(path.read_text())
            fn(document)
            path.write_text(json.dumps(document))
        return apply

    def truncate(path: Path) -> None:
        path.write_text(path.read_text()[: len(path.read_text()) // 2])

    def ranks(document):
        return document["scenarios"]["tp4"]["ranks"]["0"]

    return {
        "truncated": (truncate, "not valid JSON (truncated?)"),
        "empty": (lambda p: p.write_text(""), "is empty"),
        "not json": (lambda p: p.write_text("baseline: yes\n"), "not valid JSON"),
        "list": (lambda p: p.write_text("[]"), "the document must be an object"),
        "schema": (edit(lambda d: d.update(schema_version=2)), "schema_version 2 is not 1"),
        "not a baseline": (edit(lambda d: d.update(memprobe_baseline=False)), "not a memprobe baseline"),
        "float bytes": (edit(lambda d: ranks(d).update({"tp/pynccl": 1.5})), "tp/pynccl must be an integer number of bytes"),
        "bool bytes": (edit(lambda d: ranks(d).update({"tp/pynccl": True})), "must be an integer number of bytes"),
        "string bytes": (edit(lambda d: ranks(d).update({"world": "2MiB"})), "world must be an integer number of bytes"),
        "missing key": (edit(lambda d: d["scenarios"]["tp4"].pop("environment_key")), "scenarios.tp4 is missing environment_key"),
        "unknown key": (edit(lambda d: d.update(created_utc="now")), "unknown key(s) created_utc"),
        "rank key": (edit(lambda d: d["scenarios"]["tp4"]["ranks"].update({"r1": {"world": 1}})), "is not a rank number"),
        "edited definition": (edit(lambda d: d["scenarios"]["tp4"]["definition"]["stack"]["resolved"]["groups"]["tp"]
                                   .update(pynccl=False)),
                              "does not match its definition"),
        "bad layout": (edit(lambda d: d["scenarios"]["tp4"]["definition"]["layout"].update(ep=3)), "definition"),
        "threshold scenario": (edit(lambda d: d["thresholds"]["scenarios"].update({"tp8": {"relative": 0.1}})),
                               "thresholds.scenarios names 'tp8'"),
        "threshold pattern": (edit(lambda d: d["thresholds"]["metrics"].update({"moe-ep/*": {"relative": 0.1}})),
                              "pattern 'moe-ep/*' matches no metric"),
        "threshold value": (edit(lambda d: d["thresholds"]["default"].update(relative=-1)), "relative must be a fraction"),
        "threshold field": (edit(lambda d: d["thresholds"]["default"].update(percent=5)), "unknown key(s) percent"),
        "threshold bytes": (edit(lambda d: d["thresholds"]["default"].update(absolute_bytes=1.5)), "absolute_bytes must be a whole number"),
    }


@pytest.mark.parametrize("case", sorted(_corrupt_cases()))
def test_corrupt_baseline_is_one_line_usage_error(workdir, case):
    damage, expected = _corrupt_cases()[case]
    make_baseline()
    damage(Path("baseline.json"))
    with pytest.raises(UsageError) as raised:
        load_baseline("baseline.json")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("baseline baseline.json")
    assert expected in message


def test_missing_baseline_file(workdir):
    with pytest.raises(UsageError, match="does not exist"):
        load_baseline("nope.json")


# --------------------------------------------------------------------------- thresholds


def test_breach_needs_both_relative_and_absolute():
    limit = Limit(relative=0.05, absolute_bytes=64 * MiB)
    assert limit.breaches(1000 * MiB, 1065 * MiB)  # +6.5% and +65 MiB
    assert not limit.breaches(2000 * MiB, 2070 * MiB)  # +70 MiB but only +3.5%
    assert not limit.breaches(100 * MiB, 160 * MiB)  # +60% but only +60 MiB
    assert not limit.breaches(1000 * MiB, 1064 * MiB)  # exactly +64 MiB is not over
    assert limit.breaches(0, 65 * MiB)  # from nothing
    assert limit.improves(1000 * MiB, 900 * MiB) and not limit.improves(1000 * MiB, 990 * MiB)


def test_threshold_resolution_order():
    rules = (
        ThresholdRule(relative=0.05, absolute_bytes=64 * MiB),
        ThresholdRule(metric="moe_*/pynccl", relative=0.5),
        ThresholdRule(metric="moe_ep/pynccl", absolute_bytes=1 * MiB),  # more specific than the glob
        ThresholdRule(scenario="tp4", absolute_bytes=128 * MiB, max_bytes=5 * MiB),
        ThresholdRule(scenario="tp4", metric="moe_*/init", ignore=True),
    )
    assert resolve_limit("x", "tp/pynccl", rules) == Limit(0.05, 64 * MiB)
    assert resolve_limit("x", "moe_tp/pynccl", rules) == Limit(0.5, 64 * MiB)
    assert resolve_limit("x", "moe_ep/pynccl", rules) == Limit(0.5, 1 * MiB)
    assert resolve_limit("tp4", "moe_ep/pynccl", rules) == Limit(0.5, 128 * MiB, 5 * MiB)  # scenario > metric
    assert resolve_limit("tp4", "moe_ep/init", rules).ignore
    cli = (ThresholdRule(absolute_bytes=2 * MiB, source="command line"),)
    assert resolve_limit("tp4", "moe_ep/pynccl", rules, cli) == Limit(0.5, 2 * MiB, 5 * MiB)  # command line wins


def test_threshold_specs_and_sizes():
    rule = parse_threshold_spec("scenario=tp4,metric=moe_*/pynccl,relative=10%,absolute=128MiB,max=1.5GiB")
    assert (rule.scenario, rule.metric, rule.relative, rule.absolute_bytes, rule.max_bytes) == (
        "tp4", "moe_*/pynccl", 0.1, 128 * MiB, 1536 * MiB)
    assert parse_threshold_spec("relative=0.02").relative == 0.02
    assert parse_threshold_spec("metric=world,ignore=true").ignore is True
    assert parse_size("67108864") == 64 * MiB
    for bad in ("relative", "relative=5%,relative=6%", "metric=tp/*", "size=5", "absolute=64MB", "relative=lots"):
        with pytest.raises(UsageError):
            parse_threshold_spec(bad)
    assert mib_precise(486 * MiB, signed=True) == "+486 MiB"
    assert mib_precise(-int(7.5 * MiB), signed=True) == "-7.5 MiB"
    assert mib_precise(-int(37.5 * MiB), signed=True) == "-38 MiB"
    assert mib_precise(512) == "512 B"


# --------------------------------------------------------------------------- judging


def test_pass(workdir):
    result = judge(make_baseline(), current(), results_source="runs/current")
    assert result.exit_code == ExitCode.OK
    assert result.findings == [] and result.incomparable == []
    assert len(result.cases) == 12 and {c.status for c in result.cases} == {"pass"}
    assert lines_of(result) == ["memprobe gate: PASS, 3 scenarios within limits (exit 0)"]


def test_regression_names_the_failing_groups(workdir):
    result = judge(make_baseline(), with_run(current(), lean_reverted()), results_source="runs/current")
    assert result.exit_code == ExitCode.REGRESSION
    breached = {(f.scenario, f.metric) for f in result.breaches}
    assert (LEAN, "moe_ep/pynccl") in breached and (LEAN, "moe_tp/pynccl") in breached
    assert (LEAN, "moe_ep/custom_allreduce") not in breached  # +38 MiB is under the 64 MiB floor
    assert {f.scenario for f in result.breaches} == {LEAN}
    lines = lines_of(result)
    assert "tp4-ep2-lean rank 3 moe_ep/pynccl +484 MiB over baseline (baseline 0); limit +5% and +64 MiB" in lines
    assert "tp4-ep2-lean rank 0 total_after_first_use +1044 MiB over baseline (+34.9%); limit +5% and +64 MiB" in lines
    assert lines[-1] == "memprobe gate: FAIL, 24 regressions in 1 of 3 scenarios (exit 1)"
    assert [c.status for c in result.cases if c.scenario == LEAN] == ["regression"] * 4


def test_one_rank_regression_line(workdir):
    result = judge(make_baseline(), current({"tp4": {"rank_extra": {3: 100 * MiB}}}))
    assert result.exit_code == ExitCode.REGRESSION
    assert lines_of(result)[0] == "tp4 rank 3 tp/pynccl +100 MiB over baseline (+20.7%); limit +5% and +64 MiB"
    assert {(c.rank, c.status) for c in result.cases if c.scenario == "tp4"} == {
        (0, "pass"), (1, "pass"), (2, "pass"), (3, "regression")}


def test_small_increase_passes(workdir):
    result = judge(make_baseline(), current({"tp4": {"rank_extra": {3: 50 * MiB}}}))
    assert result.exit_code == ExitCode.OK and result.findings == []


def test_improvement_reports_update_command(workdir):
    result = judge(make_baseline(), current({"tp4": {"costs": {"pynccl": 384 * MiB}}}), results_source="runs/current")
    assert result.exit_code == ExitCode.OK
    assert {(f.kind, f.metric) for f in result.findings} == {("improvement", "tp/pynccl"), ("improvement", "tp/init"),
                                                              ("improvement", "total_after_init")}
    # total_after_first_use fell by 100 MiB too, but that is only 4.96% of 2018 MiB: not an improvement
    lines = lines_of(result)
    assert "tp4 rank 0 tp/pynccl -100 MiB below baseline (-20.7%); limit +5% and +64 MiB" in lines
    assert "To record the improvement in the baseline: memprobe baseline update --from runs/current --out baseline.json" in lines
    assert lines[-1] == "memprobe gate: PASS, 12 improvements (exit 0)"


def test_per_metric_glob_threshold(workdir):
    baseline = make_baseline(thresholds=thresholds(metrics={"tp/*": {"relative": 0.5}}))
    result = judge(baseline, current({"tp4": {"rank_extra": {3: 100 * MiB}}}))
    assert [f.metric for f in result.breaches] == ["total_after_init"]  # tp/pynccl and tp/init now allowed +50%


def test_per_scenario_threshold_beats_per_metric(workdir):
    loose = make_baseline(thresholds=thresholds(scenarios={"tp4": {"absolute_bytes": 200 * MiB}}))
    assert judge(loose, current({"tp4": {"rank_extra": {3: 100 * MiB}}})).exit_code == ExitCode.OK
    strict = make_baseline(thresholds=thresholds(metrics={"tp/*": {"absolute_bytes": 500 * MiB, "relative": 0.9}},
                                                 scenarios={"tp4": {"absolute_bytes": 1 * MiB, "relative": 0.01}}))
    assert "tp/pynccl" in {f.metric for f in judge(strict, current({"tp4": {"rank_extra": {3: 100 * MiB}}})).breaches}


def test_command_line_threshold_wins(workdir):
    baseline = make_baseline(thresholds=thresholds(scenarios={"tp4": {"absolute_bytes": 1 * MiB}}))
    comparison = current({"tp4": {"rank_extra": {3: 100 * MiB}}})
    assert judge(baseline, comparison).exit_code == ExitCode.REGRESSION
    override = [parse_threshold_spec("absolute=200MiB")]
    assert judge(baseline, comparison, thresholds_override=override).exit_code == ExitCode.OK
    ignore = [parse_threshold_spec("scenario=tp4,metric=t*,ignore=true")]
    assert judge(baseline, comparison, thresholds_override=ignore).exit_code == ExitCode.OK


def test_absolute_cap(workdir):
    cap = 2000 * MiB  # total_after_first_use of tp4 is 2018 MiB in the baseline already
    baseline = make_baseline(thresholds=thresholds(
        scenarios={"tp4": {"metrics": {"total_after_first_use": {"max_bytes": cap}}}}))
    result = judge(baseline, current())
    assert result.exit_code == ExitCode.REGRESSION
    assert [(f.kind, f.rank) for f in result.breaches] == [("cap_exceeded", r) for r in range(4)]
    assert lines_of(result)[0] == "tp4 rank 0 total_after_first_use 2018 MiB exceeds its cap of 2000 MiB by 18 MiB"


def test_incomparable_environment_exits_4(workdir):
    baseline = make_baseline()
    other = dict(ENVIRONMENT, driver="575.57.08", nccl_env={**ENVIRONMENT["nccl_env"], "NCCL_BUFFSIZE": "1048576"},
                 host="another-runner", python="3.11.9")
    comparison = current({LEAN: {"environment": other}})
    result = judge(baseline, comparison)
    assert result.exit_code == ExitCode.INCOMPARABLE
    [item] = result.incomparable
    assert item.scenario == LEAN and not item.compared
    assert [d.key for d in item.differences] == ["driver", "nccl_env.NCCL_BUFFSIZE"]  # host/python ignored
    assert lines_of(result)[0] == (
        "tp4-ep2-lean: incomparable, environment differs from the baseline (driver 580.159.04 -> 575.57.08, "
        "nccl_env.NCCL_BUFFSIZE (unset) -> 1048576); not judged (use --allow-env-mismatch to compare anyway, "
        "or update the baseline)")
    assert {c.status for c in result.cases if c.scenario == LEAN} == {"incomparable"}

    allowed = judge(baseline, comparison, allow_env_mismatch=True)
    assert allowed.exit_code == ExitCode.OK
    assert "compared anyway (--allow-env-mismatch)" in lines_of(allowed)[0]
    assert all(c.env_mismatch for c in allowed.cases if c.scenario == LEAN)


def test_regression_wins_over_incomparable(workdir):
    other = dict(ENVIRONMENT, torch="2.12.0+cu130")
    comparison = current({LEAN: {"environment": other}, "tp4": {"rank_extra": {0: 200 * MiB}}})
    assert judge(make_baseline(), comparison).exit_code == ExitCode.REGRESSION


def test_changed_definition_is_never_compared(workdir):
    baseline = make_baseline()
    changed = Scenario(name="tp4", layout=scenarios().get("tp4").layout, env={"NCCL_BUFFSIZE": "1048576"})
    comparison = with_run(current(), ScenarioRun(changed, synthetic_run(changed)))
    result = judge(baseline, comparison, allow_env_mismatch=True)
    assert result.exit_code == ExitCode.INCOMPARABLE
    assert result.incomparable[0].definition_changed and not result.incomparable[0].compared


def test_missing_scenario_and_rank_exit_3(workdir):
    baseline = make_baseline()
    result = judge(baseline, current(drop=(LEAN,)))
    assert result.exit_code == ExitCode.MEASUREMENT
    assert lines_of(result)[0] == "tp4-ep2-lean: no result (the results hold no run of this scenario)"
    assert {c.status for c in result.cases if c.scenario == LEAN} == {"missing"}

    comparison = current()
    run = comparison.get("tp4").run
    run.readings = [r for r in run.readings if not (r.rank == 2 and r.sequence > 4)]
    run.record = replace(run.record, status="incomplete", failure=Failure(2, "tp", "pynccl", "NCCL timeout"))
    result = judge(baseline, comparison)
    assert result.exit_code == ExitCode.MEASUREMENT
    [missing] = result.missing
    assert missing.rank == 2 and "rank 2 failed at tp/pynccl: NCCL timeout" in missing.note
    assert missing.note.startswith("no reading for tp/pynccl, tp/custom_allreduce, attn_cp/groups_created")
    assert result.improvements == []  # partial sums of a failed rank are not improvements


def test_judging_unknown_scenario_is_usage_error(workdir):
    with pytest.raises(UsageError, match="unknown scenario"):
        judge(make_baseline(), current(), scenarios=["tp8"])


# --------------------------------------------------------------------------- renderers


def mixed_result():
    """Regression on tp4 rank 3, improvement on tp4-ep2-full, incomparable tp4-ep2-lean."""
    baseline = make_baseline()
    comparison = current({
        "tp4": {"rank_extra": {3: 100 * MiB}},
        "tp4-ep2-full": {"group_extra": {("moe_ep", "pynccl"): -100 * MiB}},
        LEAN: {"environment": dict(ENVIRONMENT, nccl="2.27.3")},
    })
    return judge(baseline, comparison, results_source="runs/current")


def missing_result():
    comparison = current(drop=(LEAN,))
    run = comparison.get("tp4").run
    run.readings = [r for r in run.readings if r.rank != 1]
    return judge(make_baseline(), comparison, results_source="runs/current")


def test_markdown_golden(workdir):
    check_golden("mixed.md", render_markdown(mixed_result()))
    check_golden("missing.md", render_markdown(missing_result()))


def test_junit_golden(workdir):
    text = build_junit_xml(mixed_result())
    check_golden("mixed.xml", text)
    root = ElementTree.fromstring(text)
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("12", "1", "0", "4")
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [("memprobe.gate.tp4", "rank 3")]
    check_golden("missing.xml", build_junit_xml(missing_result()))


def test_table_is_plain_and_stable(workdir):
    stream = io.StringIO()
    render_table(mixed_result(), stream)
    text = stream.getvalue()
    assert "\x1b[" not in text
    assert max(len(line) for line in text.splitlines()) <= 120
    # drawn like every other memprobe table, not with ASCII borders of its own
    assert any(line.split()[:2] == ["tp4", "REGRESSION"] for line in text.splitlines()), text
    assert "|" not in text and "+-" not in text
    assert "incomparable" in text


# --------------------------------------------------------------------------- CLI


class FakeRunner:
    def __init__(self, comparison: Comparison | None = None, error: Exception | None = None):
        self.comparison, self.error, self.calls = comparison, error, []

    def __call__(self, scenario_set: ScenarioSet, options: LaunchOptions, **launch: object) -> Comparison:
        self.calls.append((scenario_set, options))
        if self.error is not None:
            raise self.error
        names = [s.name for s in scenario_set.scenarios]
        comparison = self.comparison or current()
        return Comparison("fake", names[0], [item for item in comparison.runs if item.scenario.name in names])


def invoke(args, runner=None, env=None):
    """The real memprobe app; ``runner`` stands in for the launcher (memprobe.launch.several.run_scenarios)."""
    if runner is None:
        return CliRunner().invoke(memprobe_cli.app, args, env=env)
    with mock.patch("memprobe.launch.several.run_scenarios", runner):
        return CliRunner().invoke(memprobe_cli.app, args, env=env)


def save(comparison: Comparison, path: str = "runs/current") -> str:
    names = comparison.names()
    scenario_set = ScenarioSet(tuple(item.scenario for item in comparison.runs), baseline=names[0])
    write_comparison(Path(path), comparison, scenario_set)
    return path


def test_cli_gate_pass(workdir):
    make_baseline()
    result = invoke(["gate", "--baseline", "baseline.json", "--results", save(current())])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "memprobe gate: PASS, 3 scenarios within limits (exit 0)"
    assert "scenario" in result.stdout and "peak now" in result.stdout  # the summary table


def test_cli_gate_regression_writes_every_report(workdir):
    make_baseline()
    results = save(with_run(current(), lean_reverted()))
    Path("summary.md").write_text("earlier step\n")
    result = invoke(["gate", "-b", "baseline.json", "--results", results, "--markdown", "out/gate.md",
                     "--junit-xml", "out/gate.xml", "--json", "out/gate.json"],
                    env={"GITHUB_STEP_SUMMARY": "summary.md"})
    assert result.exit_code == 1, result.output
    assert "tp4-ep2-lean rank 0 moe_ep/pynccl +484 MiB over baseline (baseline 0); limit +5% and +64 MiB" in result.stdout
    markdown = Path("out/gate.md").read_text()
    assert markdown.startswith("### memprobe gate: FAIL, 24 regressions")
    assert Path("summary.md").read_text() == "earlier step\n\n" + markdown
    suite = ElementTree.parse("out/gate.xml").getroot().find("testsuite")
    assert suite.get("failures") == "4"
    report = json.loads(Path("out/gate.json").read_text())
    assert report["exit_code"] == 1 and report["verdict"] == "regression"
    assert {f["metric"] for f in report["findings"]} >= {"moe_ep/pynccl", "moe_tp/pynccl"}
    assert report["update_command"] == "memprobe baseline update --from runs/current --out baseline.json"


@pytest.mark.parametrize("args, expected", [
    (["--baseline", "broken.json"], "not valid JSON (truncated?)"),
    (["--baseline", "nope.json"], "does not exist"),
    (["--baseline", "baseline.json", "--scenario", "tp8"], "unknown scenario(s) tp8"),
    (["--baseline", "baseline.json", "--threshold", "relative=500%"], None),
    (["--baseline", "baseline.json", "--relative", "5"], "write 5% for a percentage"),
    (["--baseline", "baseline.json", "--threshold", "metric=moe-ep/*,relative=5%"], "matches no metric"),
    (["--baseline", "baseline.json", "--absolute", "64MB"], "ambiguous"),
    (["--baseline", "baseline.json", "--markdown", "."], "is a directory"),
])
def test_cli_gate_usage_errors_are_one_line(workdir, args, expected):
    make_baseline()
    text = Path("baseline.json").read_text()
    Path("broken.json").write_text(text[: len(text) - 40])
    results = save(current())
    result = invoke(["gate", *args, "--results", results, "--junit-xml", "gate.xml"])
    if expected is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("memprobe: error: ")
    assert expected in result.stderr
    assert not Path("gate.xml").exists()


def test_cli_gate_missing_results_exit_3(workdir):
    make_baseline()
    result = invoke(["gate", "--baseline", "baseline.json", "--results", "runs/never", "--junit-xml", "gate.xml"])
    assert result.exit_code == 3, result.output
    assert "measurement failed: no results at runs/never" in result.stdout
    suite = ElementTree.parse("gate.xml").getroot().find("testsuite")
    assert suite.get("errors") == "12"

    partial = save(current(drop=("tp4",)), "runs/partial")
    result = invoke(["gate", "--baseline", "baseline.json", "--results", partial])
    assert result.exit_code == 3
    assert "tp4: no result (the results hold no run of this scenario)" in result.stdout


def test_cli_gate_environment_mismatch(workdir):
    make_baseline()
    results = save(current({LEAN: {"environment": dict(ENVIRONMENT, gpu_model="NVIDIA H200")}}))
    result = invoke(["gate", "--baseline", "baseline.json", "--results", results])
    assert result.exit_code == 4
    assert "gpu_model NVIDIA H100 80GB HBM3 -> NVIDIA H200" in result.stdout
    result = invoke(["gate", "--baseline", "baseline.json", "--results", results],
                    env={"MEMPROBE_GATE_ALLOW_ENV_MISMATCH": "1"})
    assert result.exit_code == 0, result.output
    assert "compared anyway" in result.stdout


def test_cli_gate_runs_the_baseline_scenarios(workdir):
    make_baseline()
    runner = FakeRunner()
    result = invoke(["gate", "--baseline", "baseline.json", "-s", LEAN, "-s", "tp4", "--out-dir", "runs"], runner,
                    env={"MEMPROBE_TIMEOUT": "60"})
    assert result.exit_code == 0, result.output
    [(scenario_set, options)] = runner.calls
    assert [s.name for s in scenario_set.scenarios] == ["tp4", LEAN]
    assert (options.out_dir, options.timeout_s, options.device) == (Path("runs"), 60.0, "cuda")

    bad = invoke(["gate", "--baseline", "baseline.json", "--device", "tpu"], runner)
    assert bad.exit_code == 2 and "--device must be one of" in bad.stderr and len(runner.calls) == 1

    failing = FakeRunner(error=MeasurementError("rank 1 failed at moe_ep/pynccl: NCCL WARN Cuda failure"))
    result = invoke(["gate", "--baseline", "baseline.json", "--markdown", "gate.md"], failing)
    assert result.exit_code == 3
    assert "Measurement failed:** rank 1 failed" in Path("gate.md").read_text()

    no_gpu = invoke(["gate", "--baseline", "baseline.json"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert no_gpu.exit_code == 2 and "no NVIDIA GPU visible" in no_gpu.stderr


def test_cli_baseline_update_from_results(workdir):
    results = save(current())
    result = invoke(["baseline", "update", "--from", results, "--out", "configs/baselines/h100x4.json"])
    assert result.exit_code == 0, result.output
    path = Path("configs/baselines/h100x4.json")
    first = path.read_bytes()
    # hand-tuned thresholds survive an update; identical numbers give an identical file
    document = json.loads(first)
    document["thresholds"]["metrics"]["moe_*/pynccl"] = {"relative": 0.02}
    write_baseline(path, document)
    tuned = path.read_bytes()
    again = invoke(["baseline", "update", "--from", results, "--out", str(path)])
    assert again.exit_code == 0 and "unchanged" in again.stdout
    assert path.read_bytes() == tuned

    improved = save(current({"tp4": {"costs": {"pynccl": 384 * MiB}}}), "runs/improved")
    updated = invoke(["baseline", "update", "--from", improved, "--out", str(path), "--scenario", "tp4"])
    assert updated.exit_code == 0, updated.output
    assert updated.stdout.splitlines()[1:4] == ["  tp4 rank 0 tp/pynccl: 484 MiB -> 384 MiB",
                                                "  tp4 rank 0 tp/init: 522 MiB -> 422 MiB",
                                                "  tp4 rank 0 total_after_init: 1046 MiB -> 946 MiB"]
    after = load_baseline(path)
    assert after.scenarios["tp4"].ranks[0]["tp/pynccl"] == 384 * MiB
    assert set(after.scenarios) == {"tp4", "tp4-ep2-full", LEAN}
    assert json.loads(path.read_text())["thresholds"]["metrics"] == {"moe_*/pynccl": {"relative": 0.02}}


def test_cli_baseline_update_measures(workdir):
    Path("headline.toml").write_text('[[scenario]]\nname = "tp4"\ntp = 4\n')
    runner = FakeRunner()
    result = invoke(["baseline", "update", "--scenarios", "headline.toml", "--out", "b.json"], runner)
    assert result.exit_code == 0, result.output
    assert list(load_baseline("b.json").scenarios) == ["tp4"]
    assert runner.calls[0][1] == LaunchOptions()
    # without --scenarios/--from: measure the file's own scenarios again
    rerun = invoke(["baseline", "update", "--out", "b.json"], runner)
    assert rerun.exit_code == 0 and "unchanged" in rerun.stdout


@pytest.mark.parametrize("args, expected, code", [
    (["--scenarios", "s.toml", "--from", "runs/current"], "not both", 2),
    (["--from", "runs/none"], "does not exist", 2),
    ([], "nothing to measure", 2),
    (["--from", "runs/current", "--scenario", "tp8"], "holds no run of tp8", 2),
    (["--from", "runs/failed"], "did not complete", 3),
])
def test_cli_baseline_update_errors(workdir, args, expected, code):
    save(current())
    failed = current()
    failed.runs[0].run.record = replace(failed.runs[0].run.record, status="incomplete")
    save(failed, "runs/failed")
    result = invoke(["baseline", "update", *args, "--out", "new.json"])
    assert result.exit_code == code, result.output
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr
    assert not Path("new.json").exists()


def test_cli_help_mentions_examples_and_exit_codes(workdir):
    result = invoke(["gate", "--help"])
    assert result.exit_code == 0
    for text in ("--baseline", "--allow-env-mismatch", "MEMPROBE_GATE_BASELINE", "4 environment differs",
                 "memprobe gate --baseline"):
        assert text in result.stdout
    assert "memprobe baseline update --from" in invoke(["baseline", "update", "--help"]).stdout


def test_document_round_trip_through_parse(workdir):
    document = build_baseline(synthetic_comparison())
    assert parse_document(json.loads(json.dumps(document)), "x").names() == ["tp4", "tp4-ep2-full", LEAN]


def test_nccl_logging_does_not_make_a_run_incomparable():
    """--nccl-log sets NCCL_DEBUG*; tracing changes no byte (results/h200x4-nccl-20261128), so it is not in the key."""
    from memprobe.gate.baseline import environment_key

    plain = synthetic_comparison().runs[0].run
    traced = synthetic_comparison().runs[0].run
    traced.record.environment["nccl_env"] = {**ENVIRONMENT["nccl_env"], "NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "ALLOC,INIT",
                                             "NCCL_DEBUG_FILE": "/tmp/run/nccl/%h.%p.log"}
    assert environment_key(traced) == environment_key(plain)
    traced.record.environment["nccl_env"]["NCCL_BUFFSIZE"] = "1048576"
    assert environment_key(traced) != environment_key(plain)


def test_a_gpu_baseline_is_not_measured_on_cpu(workdir):
    """Host memory is never judged against GPU memory, not even with --allow-env-mismatch (which waives environment
    differences within one kind): one line and exit 4 before anything is measured."""
    make_baseline()  # recorded on GPUs (sampling mode process)
    runner = FakeRunner()
    for extra in ([], ["--allow-env-mismatch"]):
        result = invoke(["gate", "--baseline", "baseline.json", "--device", "cpu", *extra], runner)
        assert result.exit_code == 4 and runner.calls == [], result.output
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1
        assert "holds GPU memory (NVML); measuring with --device cpu reads host memory" in result.stderr


def test_baseline_update_shows_the_bytes_where_a_change_reads_alike_in_mib():
    from memprobe.gate.update import describe_change as _change

    assert _change(514 * MiB, 514 * MiB + 40960) == "514 MiB -> 514 MiB (+40,960 bytes)"
    assert _change(1142 * MiB, 1190 * MiB) == "1142 MiB -> 1190 MiB"
    assert _change(None, 2 * MiB) == "- -> 2 MiB"

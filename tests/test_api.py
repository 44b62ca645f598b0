"""memprobe.api as an engine's tests use it: the example that asserts a per-rank budget (run as its own pytest),
and the API functions themselves (no torchrun here but the example's one CPU launch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memprobe import api
from memprobe.errors import ExitCode, MemprobeError, UsageError
from memprobe.gate.baseline import load_baseline

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pytest" / "test_memory_budget.py"
COMMITTED = ROOT / "results" / "h200x4-20261127" / "compare-tp4-ep2"
MEASURED_BASELINE = ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json"


def _example(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE), *args],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=400)


def test_the_example_passes_with_the_lean_stack_on_cpu():
    result = _example()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_example_fails_when_the_budget_is_broken():
    result = _example("-k", "estimate", MEMPROBE_EXAMPLE_BUDGET_GIB="1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "estimated ranks over 1.00 GiB" in result.stdout


def test_the_example_fails_when_the_stack_is_the_full_one():
    result = _example("-k", "estimate", MEMPROBE_EXAMPLE_STACK="full")  # full: pynccl on MoE groups, ~6.2 GiB a rank
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tp8-ep4-full: estimated ranks over 5.00 GiB" in result.stdout


def test_estimate_takes_keywords_or_options_and_is_never_a_measurement():
    by_keywords = api.estimate(tp=8, ep=4, stacks="full,lean")
    by_options = api.estimate(api.EstimateOptions(tp=8, ep=4, stacks="full,lean"))
    assert by_keywords.names() == by_options.names() == ["tp8", "tp8-ep4-full", "tp8-ep4-lean"]
    assert api.is_estimate(by_keywords)
    full, lean = (api.total_after_first_use(by_keywords, name) for name in ("tp8-ep4-full", "tp8-ep4-lean"))
    assert all(lean[rank] < full[rank] for rank in range(8))  # lean drops the MoE groups' pynccl
    assert api.communicators(by_keywords, "tp8-ep4-lean")[0]["moe_ep"]["pynccl"] == "skipped: not in stack"
    assert api.communicators(by_keywords, "tp8-ep4-full")[0]["moe_ep"]["pynccl"] == "built"


@pytest.mark.parametrize("command, options, at_least", [
    ("run", api.RunOptions, 6), ("compare", api.CompareOptions, 6), ("estimate", api.EstimateOptions, 6),
    ("plan", api.PlanOptions, 6), ("calibrate", api.CalibrateOptions, 2),
])
def test_the_cli_and_the_api_share_their_defaults(command, options, at_least):
    """A default changed on one side only would make `memprobe X` and `api.X()` measure different things."""
    import dataclasses

    import typer.main

    from memprobe.cli import app

    cli = {param.name: param.default for param in typer.main.get_command(app).commands[command].params}
    fields = {field.name: field.default for field in dataclasses.fields(options)
              if field.default is not dataclasses.MISSING and field.name in cli}
    assert len(fields) >= at_least
    for name, default in fields.items():
        assert cli[name] == (list(default) if isinstance(default, tuple) else default), name


def test_plan_is_pure_rank_arithmetic():
    plan = api.plan(tp=8, ep=4, stack="full")
    assert plan.groups.layout.world_size == 8 and plan.stack.name == "full"
    assert {"tp", "moe_ep", "moe_tp"} <= {group.name for group in plan.groups.groups}


@pytest.mark.parametrize("call, message", [
    (lambda: api.plan(tp=2, ep=4), "--ep 4 is larger than --tp 2"),
    (lambda: api.estimate(ep=4), "needs --tp"),
    (lambda: api.estimate(tp=4, stacks="medium"), "medium"),
    (lambda: api.compare(tp=2, warmup="huge", launch=api.LaunchOptions(device="cpu")), "--warmup 'huge'"),
    (lambda: api.run(tp=2, sglang="/nowhere", launch=api.LaunchOptions(device="cpu")), "--sglang"),
])
def test_bad_input_raises_usage_error_with_exit_code_2(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as raised:
        call()
    assert message in str(raised.value) and raised.value.exit_code == ExitCode.USAGE
    assert list(tmp_path.iterdir()) == []  # nothing launched, nothing written


def test_unknown_fields_are_a_type_error_not_silently_dropped():
    with pytest.raises(TypeError, match="EstimateOptions has no field"):
        api.estimate(tp=8, stack="lean")  # estimate's field is stacks


def test_load_judge_and_make_baseline_from_committed_runs(tmp_path):
    comparison = api.load(COMMITTED)
    assert comparison.baseline == "tp4" and not api.is_estimate(comparison)
    verdict = api.judge(baseline=MEASURED_BASELINE, results=COMMITTED / "tp4-ep2-lean")
    assert verdict.exit_code == ExitCode.OK and not verdict.breaches
    capped = api.judge(baseline=MEASURED_BASELINE, results=comparison, scenarios=("tp4-ep2-lean",),
                       thresholds=("metric=total_after_first_use,max=1GiB",))
    assert capped.exit_code == ExitCode.REGRESSION and capped.breaches
    update = api.make_baseline(out=tmp_path / "b.json", from_dir=COMMITTED, scenarios=("tp4-ep2-lean",))
    assert update.created and update.changed and update.ranks() == 4
    assert load_baseline(tmp_path / "b.json").names() == ["tp4-ep2-lean"]
    again = api.make_baseline(out=tmp_path / "b.json", from_dir=COMMITTED, scenarios=("tp4-ep2-lean",))
    assert not again.changed and not again.created


def test_an_estimate_is_never_judged_against_a_measured_baseline():
    with pytest.raises(MemprobeError) as raised:
        api.judge(baseline=MEASURED_BASELINE, results=api.estimate(tp=4, ep=2, stacks="lean"))
    assert raised.value.exit_code == ExitCode.INCOMPARABLE


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it from Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("budget, passes", [("5 * GIB", True), ("4 * GIB", False)])
def test_the_readme_example_runs_and_guards_its_budget(tmp_path, budget, passes):
    """The README's block as written passes; with a budget below the estimate's worst rank it fails."""
    code = _readme_example()
    assert "5 * GIB" in code
    (tmp_path / "test_memory_budget.py").write_text(code.replace("5 * GIB", budget))
    environment = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert (result.returncode == 0) == passes, result.stdout + result.stderr
    assert ("1 passed" if passes else "1 failed") in result.stdout

"""memprobe.api given values of the wrong type, or paths of every kind: one UsageError line (exit 2) naming what was
wrong, never an AttributeError or TypeError from deep inside; a str or os.PathLike wherever a path is taken. No torchrun
here: every call fails or finishes before anything is launched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import memprobe.api as api
from memprobe.errors import ExitCode, OptionTypeError, UsageError
from memprobe.estimate.calibration import packaged_calibrations
from memprobe.gate.baseline import load_baseline

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "results" / "h200x4-20261127" / "compare-tp4-ep2"
MEASURED_BASELINE = ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json"
ESTIMATED_BASELINE = ROOT / "configs" / "baselines" / "estimated-h200x8-tp8-ep4-lean.json"


class Folder:
    """An os.PathLike that is neither a str nor a Path (as a py.path or a project's own path type would be)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return str(self.path)


@pytest.mark.parametrize("call, names", [
    (lambda: api.LaunchOptions(out_dir=5), "LaunchOptions: out_dir must be a path"),
    (lambda: api.LaunchOptions(timeout_s="30"), "LaunchOptions: timeout_s must be a number"),
    (lambda: api.estimate(tp=8, ep=4, stacks=5), "EstimateOptions: stacks must be a str or None"),
    (lambda: api.estimate(tp=8, ep=4, env=None), "EstimateOptions: env must be a str or a list"),
    (lambda: api.estimate(tp=8, ep=4, gpus_per_node="8"), "EstimateOptions: gpus_per_node must be an int or None"),
    (lambda: api.estimate(tp="8"), "EstimateOptions: tp must be an int or None"),
    (lambda: api.plan(tp=True), "PlanOptions: tp must be an int"),
    (lambda: api.run(tp=2, launch="cpu"), "RunOptions: launch must be a LaunchOptions"),
    (lambda: api.estimate(api.PlanOptions(tp=8)), "must be of type EstimateOptions, got PlanOptions"),
    (lambda: api.load(None), "load: a run or comparison folder must be a path"),
    (lambda: api.load(COMMITTED, 3), "load: a run or comparison folder must be a path"),
    (lambda: api.judge(baseline=None), "GateOptions: baseline must be a path"),
    (lambda: api.judge(baseline=MEASURED_BASELINE, results=5), "GateOptions: results must be a path"),
    (lambda: api.judge(baseline=MEASURED_BASELINE, results=COMMITTED, scenarios=None), "GateOptions: scenarios"),
    (lambda: api.make_baseline(out=None, from_dir=COMMITTED), "BaselineOptions: out must be a path"),
    (lambda: api.calibrate(out=None), "CalibrateOptions: out must be a path"),
    (lambda: api.check_estimate(None), "check_estimate: a run folder must be a path"),
    (lambda: api.total_after_first_use("tp8"), "expected a Comparison or a ScenarioRun"),
])
def test_a_value_of_the_wrong_type_is_one_usage_line_naming_it(call, names, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as raised:
        call()
    assert isinstance(raised.value, OptionTypeError) and isinstance(raised.value, TypeError)  # and a TypeError still
    assert raised.value.exit_code == ExitCode.USAGE
    message = str(raised.value)
    assert names in message and "\n" not in message, message
    assert list(tmp_path.iterdir()) == []  # nothing launched, nothing written


def test_unknown_fields_stay_a_type_error_and_are_a_usage_error_too():
    with pytest.raises(OptionTypeError, match="EstimateOptions has no field"):
        api.estimate(tp=8, stack="lean")


@pytest.mark.parametrize("kind", [str, Path, Folder])
def test_launch_options_take_any_kind_of_path_as_out_dir(kind, tmp_path):
    occupied = tmp_path / "a-file"
    occupied.write_text("")
    options = api.LaunchOptions(device="cpu", out_dir=kind(tmp_path / "runs"))
    assert options.out_dir == tmp_path / "runs" and isinstance(options.out_dir, Path)
    # compare checks the folder before anything launches: a file there is a UsageError, not an AttributeError
    with pytest.raises(UsageError, match="a-file"):
        api.compare(tp=2, ep=2, launch=api.LaunchOptions(device="cpu", out_dir=kind(occupied), progress=False))


@pytest.mark.parametrize("kind", [str, Path, Folder])
def test_every_path_the_api_reads_may_be_a_str_or_a_path_like(kind, tmp_path):
    comparison = api.load(kind(COMMITTED))
    assert comparison.names() == ["tp4", "tp4-ep2-full", "tp4-ep2-lean"]
    verdict = api.judge(baseline=kind(MEASURED_BASELINE), results=kind(COMMITTED / "tp4-ep2-lean"))
    assert verdict.exit_code == ExitCode.OK and verdict.results_source == str(COMMITTED / "tp4-ep2-lean")
    update = api.make_baseline(out=kind(tmp_path / "b.json"), from_dir=kind(COMMITTED), scenarios=("tp4-ep2-lean",))
    assert update.created and load_baseline(tmp_path / "b.json").names() == ["tp4-ep2-lean"]
    calibration = packaged_calibrations()[0]
    estimated = api.estimate(tp=8, ep=4, stacks="lean", calibration=kind(calibration))
    assert api.is_estimate(estimated)
    assert [check.within for check in api.check_estimate(kind(COMMITTED)) if not check.skipped] == [True] * 3


def test_a_str_is_one_scenario_never_its_characters():
    """judge(scenarios="tp4-ep2-lean") judges that scenario; the same rule for every tuple-of-str field."""
    one = api.judge(baseline=MEASURED_BASELINE, results=COMMITTED, scenarios="tp4-ep2-lean")
    assert [summary.scenario for summary in one.summaries] == ["tp4-ep2-lean"]
    assert one.exit_code == ExitCode.OK
    assert api.EstimateOptions(tp=8, env="NCCL_BUFFSIZE=1048576").env == ("NCCL_BUFFSIZE=1048576",)
    assert api.GateOptions(baseline=MEASURED_BASELINE, thresholds=["metric=*,max=1GiB"]).thresholds == (
        "metric=*,max=1GiB",)


def test_results_held_in_memory_are_never_named_none():
    """An estimate made in memory has no folder: the messages say what it is, and the verdict names no results."""
    estimated = api.estimate(tp=8, ep=4, stacks="lean", nccl="2.28.9")  # the baseline's NCCL, whatever torch ships
    verdict = api.judge(baseline=ESTIMATED_BASELINE, results=estimated)
    assert verdict.exit_code == ExitCode.OK and verdict.results_source is None
    assert "None" not in verdict.update_command()
    with pytest.raises(api.IncomparableError) as raised:
        api.judge(baseline=MEASURED_BASELINE, results=estimated)
    assert "None" not in str(raised.value)
    assert f"the comparison {estimated.comparison_id} given to judge" in str(raised.value)


def test_the_public_surface_is_the_curated_all_and_every_name_resolves():
    assert len(api.__all__) == len(set(api.__all__))
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert api.Verdict.__name__ == "GateResult"
    for module in ("options", "results", "planning", "measuring", "loading", "gating", "calibrating"):
        assert hasattr(getattr(api, module), "__all__"), module
    assert os.path.isdir(Path(api.__file__).parent)  # a package, one module per command family

"""A gate that needs no GPU: estimated baselines, judged only against estimates (real CLI, no torchrun)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "memprobe" / "estimate" / "calibrations" / "nvidia-h200.json"
MEASURED_BASELINE = ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json"
MEASURED_RUN = ROOT / "results" / "h200x4-20261127" / "compare-tp4-ep2" / "tp4-ep2-lean"
SCENARIOS = """baseline = "tp4-ep2-lean"
[[scenario]]
name = "tp4-ep2-lean"
tp = 4
ep = 2
stack = "lean"
"""


@pytest.fixture
def estimated_baseline(memprobe, tmp_path):
    (tmp_path / "scenarios.toml").write_text(SCENARIOS)
    made = memprobe("baseline", "update", "--estimate", "--scenarios", "scenarios.toml", "--out", "b.json")
    assert made.returncode == 0, made.stderr
    assert "b.json: written (1 scenario, 4 ranks, ESTIMATED GPU memory: nothing measured)" in made.stdout
    return tmp_path / "b.json"


def test_an_estimated_baseline_records_that_it_is_an_estimate(estimated_baseline):
    document = json.loads(estimated_baseline.read_text())
    key = document["scenarios"]["tp4-ep2-lean"]["environment_key"]
    assert key["sampling_mode"] == "estimate" and key["gpu_model"] == "NVIDIA H200"
    assert set(document["scenarios"]["tp4-ep2-lean"]["ranks"]) == {"0", "1", "2", "3"}


def test_the_estimate_gate_passes_on_the_same_estimate_and_says_it_is_one(memprobe, estimated_baseline):
    result = memprobe("gate", "--estimate", "--baseline", "b.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS (estimated, not measured)" in result.stdout and "ESTIMATED GPU memory" in result.stdout


def test_the_estimate_gate_fails_when_the_estimate_grows(memprobe, estimated_baseline, tmp_path):
    """Another calibration (a new driver, say) whose first communicator costs 200 MiB more: a regression at tp/pynccl."""
    calibration = json.loads(CALIBRATION.read_text())
    for point in calibration["points"]:
        point["first_communicator_bytes"] += 200 << 20
    (tmp_path / "heavier.json").write_text(json.dumps(calibration))
    result = memprobe("gate", "--estimate", "--baseline", "b.json", "--calibration", "heavier.json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tp/pynccl" in result.stdout and "FAIL (estimated, not measured)" in result.stdout


@pytest.mark.parametrize("args", [
    ("gate", "--estimate", "--baseline", str(MEASURED_BASELINE)),
    ("gate", "--baseline", "b.json", "--results", str(MEASURED_RUN)),
    # results of another kind are refused even where no scenario name matches (not reported as missing)
    ("gate", "--baseline", str(ROOT / "configs/baselines/estimated-h200x8-tp8-ep4-lean.json"), "--results", str(MEASURED_RUN)),
])
def test_an_estimate_and_a_measurement_are_never_judged_against_each_other(memprobe, estimated_baseline, args):
    result = memprobe(*args)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "never judged against each other" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_estimate_never_enters_a_measured_baseline_file(memprobe, tmp_path):
    (tmp_path / "measured.json").write_bytes(MEASURED_BASELINE.read_bytes())
    result = memprobe("baseline", "update", "--estimate", "--out", "measured.json")
    assert result.returncode == 4, result.stdout + result.stderr
    assert (tmp_path / "measured.json").read_bytes() == MEASURED_BASELINE.read_bytes()


def test_the_committed_estimated_baseline_passes(memprobe):
    result = memprobe("gate", "--estimate", "--baseline", str(ROOT / "configs/baselines/estimated-h200x8-tp8-ep4-lean.json"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_estimate_gate_uses_the_baselines_nccl_whatever_nccl_torch_brings(monkeypatch):
    """A runner whose torch brings another NCCL (torch 2.14's 2.30.7) still re-estimates the committed baseline with
    the NCCL it recorded (2.28.9); --nccl chooses other rules, and then the environments differ."""
    from memprobe import api
    from memprobe.errors import ExitCode

    monkeypatch.setattr("memprobe.estimate.nccl_versions.installed_nccl", lambda: ("2.30.7", "nvidia-nccl-cu13"))
    baseline = ROOT / "configs" / "baselines" / "estimated-h200x8-tp8-ep4-lean.json"
    assert api.judge(baseline=baseline, estimate=True).exit_code == ExitCode.OK
    assert api.judge(baseline=baseline, estimate=True, nccl="2.30.7").exit_code == ExitCode.INCOMPARABLE

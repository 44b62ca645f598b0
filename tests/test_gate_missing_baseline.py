"""A gate given a baseline that is not there says, in one line, the baseline update that makes one for it; that
command works as printed (with FILE named) and the same gate then passes."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memprobe import api
from memprobe.cli import app
from memprobe.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def _hint(**options) -> list[str]:
    with pytest.raises(UsageError) as raised:
        api.judge(**options)
    message = str(raised.value)
    assert message.count("\n") == 0 and " does not exist (make one with: memprobe baseline update " in message
    return shlex.split(message.split("make one with: ", 1)[1].rstrip(")"))


def test_the_hint_of_an_estimated_gate_is_an_estimated_update_that_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = _hint(baseline=Path("missing.json"), estimate=True)
    assert command[:3] == ["memprobe", "baseline", "update"] and "--estimate" in command
    scenarios = str(ROOT / "configs" / "scenarios" / "moe-stacks.toml")
    made = CliRunner().invoke(app, [scenarios if word == "FILE" else word for word in command[1:]])
    assert made.exit_code == 0, made.output
    verdict = api.judge(baseline=Path("missing.json"), estimate=True)
    assert verdict is not None and verdict.headline().startswith("memprobe gate: PASS (estimated, not measured)")


def test_the_hint_keeps_the_gate_s_device_and_scenarios_and_takes_saved_results_with_from(tmp_path):
    missing = tmp_path / "missing.json"
    measured = _hint(baseline=missing, scenarios=("tp2",), launch=api.LaunchOptions(device="cpu"))
    assert "--estimate" not in measured and measured[-4:] == ["--scenario", "tp2", "--device", "cpu"]
    assert measured[measured.index("--out") + 1] == str(missing)
    saved = _hint(baseline=missing, results=tmp_path / "runs")
    assert saved[3:] == ["--out", str(missing), "--from", str(tmp_path / "runs")]

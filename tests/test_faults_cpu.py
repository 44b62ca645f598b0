"""Faults around a real launch on CPU (memprobe -> torchrun -> workers) that only real processes show: a killed
memprobe (the parent-death signal ends torchrun and every worker), a hang-up through a real signal handler.
Repeated signals, timeouts and deleted run folders are tested on replayed launches (test_supervisor_replay.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import _memprobe_env
from memprobe.model.run_files import load_run
from test_pipeline_cpu import leftover_memprobe_processes

pytestmark = pytest.mark.e2e

HANG = {"MEMPROBE_TEST_FAULT": "0:tp/groups_created:hang"}  # rank 0 hangs: the run never ends by itself


def start(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    (folder / "tmp").mkdir(exist_ok=True)  # memprobe's own temp folders go here, to be checked afterwards
    return subprocess.Popen([sys.executable, "-m", "memprobe", "run", "--device", "cpu", "--tp", "2", "--quiet", *args],
                            cwd=folder, env=_memprobe_env({**(env or {}), "TMPDIR": str(folder / "tmp")}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(stream: Path, text: str, process: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if stream.exists() and text in stream.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{stream} never showed {text!r} (memprobe exit {process.poll()})")


def gone_within(folder: Path, seconds: float) -> list[int]:
    """The run's processes still alive after ``seconds`` (the test's own: found by run token and working folder)."""
    deadline = time.monotonic() + seconds
    while leftover_memprobe_processes(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = leftover_memprobe_processes(folder)
    for pid in left:  # do not leave them to the rest of the suite
        os.kill(pid, signal.SIGKILL)
    return left


def rank_stream(folder: Path, run_id: str, rank: int) -> Path:
    return folder / "memprobe-runs" / run_id / "ranks" / f"rank-{rank:05d}.jsonl"


def test_killing_memprobe_takes_torchrun_and_every_worker_with_it(tmp_path):
    process = start(tmp_path, "--run-id", "orphans", env=HANG)
    wait_for(rank_stream(tmp_path, "orphans", 1), '"launched"', process)
    assert leftover_memprobe_processes(tmp_path)  # torchrun and the launchers run
    process.kill()  # nothing of memprobe runs after this: the kernel must end the rest
    process.communicate(timeout=30)
    assert gone_within(tmp_path, 20) == []
    assert list((tmp_path / "tmp").iterdir()) == []  # torchrun removed its log folder on the way out


def test_a_hang_up_ends_like_sigterm_and_keeps_the_readings(tmp_path):
    process = start(tmp_path, "--run-id", "hungup", env=HANG)
    wait_for(rank_stream(tmp_path, "hungup", 0), '"world"', process)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 129, stderr
    assert stderr.strip().splitlines()[-1].startswith("memprobe: error: interrupted by SIGHUP; workers stopped")
    run = load_run(tmp_path / "memprobe-runs" / "hungup")
    assert run.record.status == "incomplete" and "SIGHUP" in run.record.failure.message
    assert any(r.step == "world" for r in run.readings)
    assert gone_within(tmp_path, 10) == []
    assert list((tmp_path / "tmp").iterdir()) == []  # torchrun's log folder went too

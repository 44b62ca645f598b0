"""Faults around a real launch on CPU (memprobe -> torchrun -> workers): hang-ups, repeated signals, a killed
memprobe, a --timeout shorter than start-up. Each waits only as long as its case needs (tiny layouts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import _memprobe_env
from memprobe.model.records import load_run
from test_pipeline_cpu import leftover_memprobe_processes

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


def test_a_second_ctrl_c_during_the_cleanup_loses_nothing(tmp_path):
    process = start(tmp_path, "--run-id", "twice", env=HANG)
    wait_for(rank_stream(tmp_path, "twice", 0), '"world"', process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == [stderr.strip().splitlines()[-1]]  # one line
    assert "interrupted by SIGINT" in stderr and "readings kept" in stderr
    run_dir = tmp_path / "memprobe-runs" / "twice"
    assert (run_dir / "readings.csv").is_file()
    run = load_run(run_dir)
    assert run.record.status == "incomplete" and "SIGINT" in run.record.failure.message
    assert any(r.step == "world" for r in run.readings)
    assert gone_within(tmp_path, 10) == []


def test_a_run_folder_deleted_mid_run_is_one_line_exit_3_and_stops_everything(tmp_path):
    import shutil

    process = start(tmp_path, "--run-id", "deleted", env=HANG)
    wait_for(rank_stream(tmp_path, "deleted", 1), '"launched"', process)
    shutil.rmtree(tmp_path / "memprobe-runs" / "deleted")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    assert stderr.strip().splitlines()[-1].endswith("its run folder memprobe-runs/deleted was deleted while it ran; "
                                                    "its readings went with it"), stderr
    assert "Traceback" not in stderr
    assert gone_within(tmp_path, 10) == []


def test_a_timeout_shorter_than_start_up_says_so_and_stops_everything(tmp_path):
    started = time.monotonic()
    process = start(tmp_path, "--run-id", "short", "--timeout", "2")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    line = stderr.strip().splitlines()[-1]
    assert " failed" in line and "start-up" in line and "longer than the timeout" in line, line
    assert "never started" not in line
    assert time.monotonic() - started < 2 + 25
    run = load_run(tmp_path / "memprobe-runs" / "short")
    assert run.record.status == "incomplete"
    assert not any(r.step == "end" for r in run.readings)  # stopped, not left to finish
    assert gone_within(tmp_path, 10) == []

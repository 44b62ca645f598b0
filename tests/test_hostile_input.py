"""Hostile input and a hostile node, without a launch: each is one line, exit 2 (3 for a run that cannot keep its
files), and nothing created. The CLI runs in this process (``memprobe.cli.main``), so that each case costs
milliseconds; the bad-input table of docs/reliability.md lists them."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import pytest

from memprobe.cli import main

LONG = "a" * 300
FILES = {
    "long-name.toml": f'[[scenario]]\nname = "{LONG}"\ntp = 2\n',
    "listed-base.toml": 'base = ["lean"]\n',
    "not-utf8.toml": b'name = "x\xff\xfe"\nbase = "lean"\n',
    "not-utf8-scenarios.toml": b'[[scenario]]\nname = "\xff"\ntp = 2\n',
    "nul-env.toml": '[[scenario]]\nname = "a"\ntp = 2\nenv = { NCCL_X = "a\\u0000b" }\n',
    "huge-env.toml": '[[scenario]]\nname = "a"\ntp = 2\nenv = { NCCL_X = "' + "x" * 200_000 + '" }\n',
}

CASES = {
    "300-character --run-id": ["run", "--device", "cpu", "--tp", "2", "--run-id", LONG],
    "300-character scenario name": ["compare", "--device", "cpu", "--scenarios", "long-name.toml"],
    "--run-id with a trailing newline": ["run", "--device", "cpu", "--tp", "2", "--run-id", "trail\n"],
    "--rdzv-id with a trailing newline": ["run", "--device", "cpu", "--tp", "2", "--nnodes", "2", "--rdzv-endpoint",
                                          "127.0.0.1:29400", "--rdzv-id", "job\n"],
    "--master-addr with a trailing newline": ["run", "--device", "cpu", "--tp", "2", "--master-addr", "127.0.0.1\n"],
    "--out-dir under /proc": ["run", "--device", "cpu", "--tp", "2", "--out-dir", "/proc/memprobe-runs"],
    "--out-dir under /sys": ["run", "--device", "cpu", "--tp", "2", "--out-dir", "/sys/memprobe-runs"],
    "--out-dir through a symlink loop": ["run", "--device", "cpu", "--tp", "2", "--out-dir", "loop1/runs"],
    "stack file with base = [\"lean\"]": ["run", "--device", "cpu", "--tp", "2", "--stack", "listed-base.toml"],
    "stack file that is not UTF-8": ["run", "--device", "cpu", "--tp", "2", "--stack", "not-utf8.toml"],
    "scenario file that is not UTF-8": ["compare", "--device", "cpu", "--scenarios", "not-utf8-scenarios.toml"],
    "scenario env value holding a NUL": ["compare", "--device", "cpu", "--scenarios", "nul-env.toml"],
    "scenario env value of 200 KB": ["compare", "--device", "cpu", "--scenarios", "huge-env.toml"],
    "plan of 100000000 ranks": ["plan", "--tp", "100000000"],
    "run of 100000000 ranks": ["run", "--device", "cpu", "--tp", "100000000"],
    "CPU run of more ranks than the CPU limit": ["run", "--device", "cpu", "--tp", "4096"],
}


def _prepare(folder: Path) -> None:
    for name, content in FILES.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    os.symlink("loop2", folder / "loop1")
    os.symlink("loop1", folder / "loop2")


def _snapshot(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memprobe") and ": error: " in lines[0], captured.err
    return lines[0]


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES.keys()))
def test_hostile_input_is_one_line_exit_2_in_well_under_a_second(tmp_path, monkeypatch, capsys, args):
    _prepare(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    started = time.monotonic()
    assert main(list(args)) == 2
    assert time.monotonic() - started < 1.0
    line = _one_error_line(capsys)
    assert "Traceback" not in line
    assert _snapshot(tmp_path) == before


def test_the_run_id_message_states_the_first_character_rule(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--device", "cpu", "--tp", "2", "--run-id", "-x"]) == 2
    assert "must start with a letter or digit" in _one_error_line(capsys)


def test_a_rendezvous_port_in_use_is_named_before_launch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["run", "--device", "cpu", "--tp", "2", "--master-port", str(port)]) == 2
    assert f"--master-port {port} is already in use" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_the_world_size_limit_is_one_constant_and_4096_ranks_plan_fast():
    from memprobe.errors import UsageError
    from memprobe.engines.api import MAX_WORLD_SIZE
    from memprobe.engines.sglang.layout import SGLangLayout as Layout, plan_groups

    assert MAX_WORLD_SIZE == 65536
    Layout(tp=MAX_WORLD_SIZE)  # the limit itself is allowed
    with pytest.raises(UsageError, match="65536"):
        Layout(tp=4096, pp=32)
    started = time.monotonic()
    assert len(plan_groups(Layout(tp=4096, ep=64)).group("self_pp").rank_lists) == 4096
    assert time.monotonic() - started < 0.5


def test_closed_stdout_is_one_line_exit_2_and_nothing_created(memprobe, tmp_path):
    import subprocess
    import sys

    from conftest import _memprobe_env

    result = subprocess.run(["bash", "-c", f"exec '{sys.executable}' -m memprobe run --device cpu --tp 2 >&-"],
                            cwd=tmp_path, env=_memprobe_env(), stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["memprobe: error: standard output is closed; give memprobe a file "
                                                  "or a pipe to print to (e.g. >/dev/null)"]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- full disk

def _disk_full(monkeypatch) -> None:
    """ENOSPC where a file's bytes are made durable, as a full disk reports it on fsync or write."""
    from memprobe.model import records

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records.os, "fsync", full)


def test_a_write_on_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from memprobe.errors import OutputError
    from memprobe.model.records import atomic_write_text

    target = tmp_path / "readings.csv"
    target.write_text("old\n")
    _disk_full(monkeypatch)
    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["readings.csv"]


def _saved_run(folder: Path) -> Path:
    from support import headline_scenarios, synthetic_run

    from memprobe.model.run_files import write_run

    run = synthetic_run(headline_scenarios().scenarios[0])
    write_run(folder / "saved", run.record, run.readings)
    return folder / "saved"


@pytest.mark.parametrize("command", [["report", "saved", "--csv", "out.csv"],
                                     ["baseline", "update", "--from", "saved", "--out", "base.json"]],
                         ids=["report --csv", "baseline update --out"])
def test_an_export_on_a_full_disk_is_one_line_exit_2(tmp_path, monkeypatch, capsys, command):
    _saved_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    _disk_full(monkeypatch)
    assert main(command) == 2
    assert "No space left on device" in _one_error_line(capsys)
    assert not (tmp_path / command[-1]).exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_run_that_cannot_write_its_readings_is_exit_3_with_the_streams_kept(tmp_path, monkeypatch):
    """The parent's last writes (readings.csv, run.json) after the workers ended, on a full disk."""
    from memprobe.errors import MeasurementError
    from memprobe.launch import assemble as assembling
    from memprobe.launch.assemble import LaunchOutcome, Tracked, assemble
    from memprobe.launch.follow import StreamFollower
    from memprobe.launch.options import LaunchOptions
    from memprobe.launch.plan import Member
    from memprobe.launch.prepare import new_record
    from memprobe.engines.sglang.layout import SGLangLayout as Layout
    from memprobe.model.records import stream_path
    from memprobe.model.run_files import write_run
    from memprobe.model.scenario import Scenario

    scenario = Scenario("tp1", Layout(tp=1))
    run_dir = tmp_path / "run"
    stream = stream_path(run_dir, 0)
    stream.parent.mkdir(parents=True)
    stream.write_text('{"type": "started", "pid": 1, "rank": 0, "time": 1.0}\n{"type": "done", "rank": 0, "time": 2.0}\n')
    options = LaunchOptions(device="cpu", out_dir=tmp_path)
    follower = StreamFollower(run_dir, range(1))
    follower.poll()
    record = new_record(scenario, options, run_dir, ["memprobe"])
    write_run(run_dir, record, None)  # as prepare does before the launch (status running)
    tracked = Tracked(member=Member(scenario, run_dir, {}), record=record, follower=follower, total=1, state="done")
    monkeypatch.setattr(assembling, "rank_infos", lambda run_dir, world_size: [])
    _disk_full(monkeypatch)
    with pytest.raises(MeasurementError) as failure:
        assemble(tracked, options, LaunchOutcome(), tmp_path / "torchrun.log")
    assert failure.value.exit_code == 3
    assert "No space left on device" in str(failure.value) and "ranks/" in str(failure.value)
    assert stream.is_file()


def test_a_run_that_cannot_write_its_first_files_launches_nothing_and_leaves_no_folder(tmp_path, monkeypatch):
    from memprobe.errors import MeasurementError
    from memprobe.launch.options import LaunchOptions
    from memprobe.launch.several import run_scenario
    from memprobe.engines.sglang.layout import SGLangLayout as Layout
    from memprobe.model.scenario import Scenario

    _disk_full(monkeypatch)
    with pytest.raises(MeasurementError, match="No space left on device") as failure:
        run_scenario(Scenario("tp1", Layout(tp=1)), LaunchOptions(device="cpu", out_dir=tmp_path), tmp_path / "run")
    assert failure.value.exit_code == 3 and list(tmp_path.iterdir()) == []

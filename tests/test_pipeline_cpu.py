"""The real pipeline on CPU: memprobe -> torchrun -> workers with real gloo groups -> host RSS readings."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from memprobe.analysis.attribution import components_by_rank
from memprobe.model.comparison import load_comparison
from memprobe.launch.prepare import expected_readings
from memprobe.model.records import RUN_TOKEN_VARIABLE
from memprobe.model.layout import Layout, plan_groups
from memprobe.model.records import load_run
from memprobe.model.scenario import Scenario


def leftover_memprobe_processes(folder: Path) -> list[int]:
    """Processes started by a memprobe run in ``folder`` (they carry a run token) that are still alive."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as stream:
                carries_token = RUN_TOKEN_VARIABLE.encode() in stream.read()
            if carries_token and os.readlink(f"/proc/{entry}/cwd") == str(folder):
                found.append(int(entry))
        except OSError:
            continue
    return found


def only_run_folder(root: Path) -> Path:
    folders = [p for p in (root / "memprobe-runs").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def test_run_cpu_tp4_ep2_every_rank_and_step(memprobe, tmp_path):
    result = memprobe("run", "--device", "cpu", "--tp", "4", "--ep", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    run_dir = only_run_folder(tmp_path)
    run = load_run(run_dir)
    assert run.record.status == "complete"
    assert run.record.layout == Layout(tp=4, ep=2).as_dict()
    plan = plan_groups(Layout(tp=4, ep=2))
    built = [g.name for g in plan.built_groups() if g.name != "world"]
    expected_steps = [("", "start"), ("", "cuda_context"), ("world", "world")]
    for name in built:
        expected_steps += [(name, step) for step in ("before", "groups_created", "pynccl", "custom_allreduce")]
    expected_steps += [(name, "first_use") for name in ["world", *built]] + [("", "end")]
    assert len(expected_steps) == expected_readings(Scenario("x", Layout(tp=4, ep=2)))
    for rank in range(4):
        readings = sorted((r for r in run.readings if r.rank == rank), key=lambda r: r.sequence)
        assert [(r.group, r.step) for r in readings] == expected_steps
        assert [r.sequence for r in readings] == list(range(len(expected_steps)))
        # host RSS is real: a Python process with torch imported holds well over 50 MiB
        assert all(r.primary_bytes is not None and r.primary_bytes > 50 * 2**20 for r in readings)
        # the CPU device cannot build GPU communicators; every such step says why
        for r in readings:
            if r.step in ("pynccl", "custom_allreduce"):
                assert r.status == "skipped" and r.note
    # moe_ep's first collective really ran over gloo (width 2); width-1 groups ran none
    first_use = {(r.group, r.status) for r in run.readings if r.step == "first_use"}
    assert ("moe_ep", "ok") in first_use and ("pp", "skipped") in first_use
    assert {info.sampling_mode for info in run.record.ranks} == {"host_rss_anon"}
    assert sorted(info.rank for info in run.record.ranks) == [0, 1, 2, 3]
    parts = components_by_rank(run)
    assert set(parts) == {0, 1, 2, 3}
    # the parts add up: the totals are the last readings themselves
    for rank, readings in ((r, [x for x in run.readings if x.rank == r]) for r in range(4)):
        end = max(readings, key=lambda x: x.sequence)
        assert parts[rank]["total_after_first_use"] == end.primary_bytes
    assert "total after first use" in result.stdout and "MiB" in result.stdout
    assert leftover_memprobe_processes(tmp_path) == []


def test_compare_cpu_end_to_end_with_exports(cpu_compare):
    tmp_path, result = cpu_compare  # compare --device cpu --tp 2 --ep 2 with every export (conftest.py)
    assert result.returncode == 0, result.stderr
    comparison_dir = only_run_folder(tmp_path)
    comparison = load_comparison(comparison_dir)
    # on --tp 2 --ep 2 full and lean build the same communicators (moe_ep = tp, moe_tp width 1): lean is not run
    assert comparison.names() == ["tp2", "tp2-ep2-full"]
    assert "tp2-ep2-lean would measure the same as tp2-ep2-full" in result.stderr
    assert comparison.baseline == "tp2"
    for item in comparison.runs:
        assert item.run.record.status == "complete"
        assert sorted({r.rank for r in item.run.readings}) == [0, 1]
        assert item.run.record.stack_name == item.scenario.stack
    # the scenarios ran in separate launches: distinct worker PIDs
    pids = [{info.pid for info in item.run.record.ranks} for item in comparison.runs]
    assert not (pids[0] & pids[1])
    for name in ("long.csv", "summary.csv", "all.json", "table.md"):
        assert (tmp_path / name).stat().st_size > 0
    document = json.loads((tmp_path / "all.json").read_text())
    assert document["schema_version"] == 1
    from test_json_schemas import problems

    assert problems("comparison", document) == []  # docs/schema/comparison.schema.json, on two scenarios
    # --device cpu skips the CUDA context and every GPU communicator: listed as skipped, no bytes in the summary
    assert "tp/pynccl" in document["scenarios"][0]["skipped_by_rank"]["0"]
    assert {row["cuda_context_bytes"] for row in csv.DictReader((tmp_path / "summary.csv").open())} == {""}
    assert "tp2-ep2-full" in result.stdout and "MiB" in result.stdout
    assert leftover_memprobe_processes(tmp_path) == []


def test_report_rerenders_a_saved_run_without_launching(memprobe, cpu_run):
    again = memprobe("report", str(cpu_run["run_dir"]))
    assert again.returncode == 0, again.stderr
    assert "tp1" in again.stdout and "total after first use" in again.stdout
    assert again.stdout == cpu_run["stdout"]  # the very table the run printed


@pytest.mark.parametrize(
    "fault, group_step",
    [
        ("1:tp/groups_created:raise", "tp/groups_created"),
        ("0:moe_ep/pynccl:raise", "moe_ep/pynccl"),
    ],
)
def test_a_rank_that_raises_stops_the_run_and_keeps_readings(memprobe, tmp_path, fault, group_step):
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--ep", "2" if "moe_ep" not in fault else "1",
                      "--quiet", "--run-id", "failing", env={"MEMPROBE_TEST_FAULT": fault})
    if "moe_ep" in fault:  # ep=1: moe_ep is two singletons; pynccl step exists but is skipped
        pass
    assert result.returncode == 3, result.stderr
    rank = fault.split(":")[0]
    line = result.stderr.strip().splitlines()[-1]
    assert f"rank {rank} failed at {group_step}" in line and "injected fault" in line
    run = load_run(tmp_path / "memprobe-runs" / "failing")
    assert run.record.status == "incomplete"
    assert run.record.failure is not None and run.record.failure.rank == int(rank)
    assert run.record.failure.last_lines  # the worker's last error lines
    steps_before = {(r.rank, r.step) for r in run.readings}
    assert (int(rank), "world") in steps_before  # finished readings were kept
    assert leftover_memprobe_processes(tmp_path) == []


def test_a_killed_rank_is_reported_and_nothing_survives(memprobe, tmp_path):
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "killed",
                      env={"MEMPROBE_TEST_FAULT": "1:tp/pynccl:kill"})
    assert result.returncode == 3, result.stderr
    assert "rank 1 failed" in result.stderr and "tp/groups_created" in result.stderr and "killed" in result.stderr
    run = load_run(tmp_path / "memprobe-runs" / "killed")
    assert run.record.status == "incomplete"
    assert any(r.rank == 1 and r.step == "groups_created" for r in run.readings)
    assert leftover_memprobe_processes(tmp_path) == []


def test_a_hanging_rank_ends_within_the_timeout(memprobe, tmp_path):
    """--timeout is per rank: the longest any rank may go without a new reading. The hung rank is named,
    not rank 0, which waits for it at the next step (it streamed that it arrived there)."""
    import time

    started = time.monotonic()
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "hung", "--timeout", "20",
                      env={"MEMPROBE_TEST_FAULT": "1:tp/groups_created:hang"})
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert "rank 1 failed: stopped progressing after its tp/before reading: silent for 2" in result.stderr
    assert "(--timeout 20 s)" in result.stderr
    assert elapsed < 20 + 20
    run = load_run(tmp_path / "memprobe-runs" / "hung")
    assert run.record.status == "incomplete"
    assert leftover_memprobe_processes(tmp_path) == []


def test_a_healthy_run_longer_than_the_timeout_completes(memprobe, tmp_path):
    """The run as a whole takes longer than --timeout; no rank ever goes that long without a reading."""
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "slow", "--timeout", "15",
                      env={"MEMPROBE_TEST_FAULT": "1:tp/groups_created:sleep9,1:pp/groups_created:sleep9"})
    assert result.returncode == 0, result.stderr
    run = load_run(tmp_path / "memprobe-runs" / "slow")
    assert run.record.status == "complete" and run.record.wall_time_s > 18


@pytest.mark.parametrize("signal_name, exit_code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupt_stops_workers_and_keeps_readings(tmp_path, signal_name, exit_code):
    import signal
    import subprocess
    import sys
    import time

    from conftest import _memprobe_env

    process = subprocess.Popen([sys.executable, "-m", "memprobe", "run", "--device", "cpu", "--tp", "2", "--quiet",
                                "--run-id", "interrupted"], cwd=tmp_path, env=_memprobe_env({"MEMPROBE_TEST_FAULT": "0:tp/groups_created:hang"}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stream = tmp_path / "memprobe-runs" / "interrupted" / "ranks" / "rank-00000.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (stream.exists() and '"world"' in stream.read_text()):
        time.sleep(0.2)
    assert stream.exists(), "the worker never reached the world step"
    sent = time.monotonic()
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr
    assert time.monotonic() - sent < 20
    assert f"interrupted by {signal_name}" in stderr and "readings kept" in stderr
    run = load_run(tmp_path / "memprobe-runs" / "interrupted")
    assert run.record.status == "incomplete"
    assert any(r.step == "world" for r in run.readings)
    assert leftover_memprobe_processes(tmp_path) == []


def test_compare_jobs_runs_scenarios_side_by_side_in_separate_processes(memprobe, tmp_path):
    result = memprobe("compare", "--device", "cpu", "--tp", "2", "--ep", "2", "--stacks", "lean", "--jobs", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    comparison = load_comparison(only_run_folder(tmp_path))
    assert comparison.names() == ["tp2", "tp2-ep2-lean"]
    first, second = ({info.pid for info in item.run.record.ranks} for item in comparison.runs)
    assert first and second and not (first & second)
    for item in comparison.runs:
        assert item.run.record.status == "complete"
        times = [r.elapsed_s for r in item.run.readings]
        assert len(times) == 2 * expected_readings(item.scenario)
    assert leftover_memprobe_processes(tmp_path) == []


def test_rank_warnings_reach_the_user(memprobe, tmp_path):
    """A warning a worker records (here: written into a saved run) is printed by report, once."""
    from support import headline_scenarios, synthetic_run

    from memprobe.model.records import write_run

    run = synthetic_run(headline_scenarios().scenarios[1])
    for info in run.record.ranks:
        info.warnings.append("GPU GPU-0 is shared with other processes (pids [4242])")
    write_run(tmp_path / "saved", run.record, run.readings)
    result = memprobe("report", "saved")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("is shared with other processes") == 1


def test_compare_without_tp_says_which_layout_it_chose(memprobe, tmp_path):
    result = memprobe("compare", "--device", "cpu", "--stacks", "lean", "--quiet", timeout=400)
    assert result.returncode == 0, result.stderr
    assert "no --tp given; comparing the largest layout this node supports: --tp 4 --ep 2" in result.stderr
    assert load_comparison(only_run_folder(tmp_path)).names() == ["tp4", "tp4-ep2-lean"]


def test_gate_measures_on_cpu_and_passes_against_its_own_baseline(memprobe, tmp_path):
    scenarios = tmp_path / "one.toml"
    scenarios.write_text('[[scenario]]\nname = "tp2"\ntp = 2\n')
    made = memprobe("baseline", "update", "--scenarios", str(scenarios), "--device", "cpu", "--out", "base.json")
    assert made.returncode == 0, made.stderr
    # host RSS moves by a few MiB between runs; the default +5% and +64 MiB absorb it
    judged = memprobe("gate", "--baseline", "base.json", "--device", "cpu", "--junit-xml", "gate.xml")
    assert judged.returncode == 0, judged.stdout + judged.stderr
    assert "PASS" in judged.stdout and (tmp_path / "gate.xml").is_file()
    assert "host memory (RSS) of each rank, measured with --device cpu" in judged.stdout  # the gate says what it judged

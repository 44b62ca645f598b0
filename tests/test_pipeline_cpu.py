"""The real pipeline on CPU: memprobe -> torchrun -> workers with real gloo groups -> host RSS readings."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from memprobe.analysis.attribution import components_by_rank
from memprobe.model.comparison import load_comparison
from memprobe.launch.prepare import expected_readings
from memprobe.model.records import RUN_TOKEN_VARIABLE
from memprobe.engines.sglang.layout import SGLangLayout as Layout, plan_groups
from memprobe.model.run_files import load_run
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


def test_a_cpu_run_has_every_rank_and_step_with_real_host_memory(memprobe, cpu_compare):
    """tp2-ep2-full of the session's real CPU comparison (conftest.py): every group, real gloo collectives."""
    folder, _ = cpu_compare
    run_dir = folder / "memprobe-runs" / "c" / "tp2-ep2-full"
    run = load_run(run_dir)
    assert run.record.status == "complete"
    assert run.record.layout == Layout(tp=2, ep=2).as_dict()
    plan = plan_groups(Layout(tp=2, ep=2))
    built = [g.name for g in plan.built_groups() if g.name != "world"]
    expected_steps = [("", "start"), ("", "cuda_context"), ("world", "world")]
    for name in built:
        expected_steps += [(name, step) for step in ("before", "groups_created", "pynccl", "custom_allreduce")]
    expected_steps += [(name, "first_use") for name in ["world", *built]] + [("", "end")]
    assert len(expected_steps) == expected_readings(Scenario("x", Layout(tp=2, ep=2)))
    for rank in range(2):
        readings = sorted((r for r in run.readings if r.rank == rank), key=lambda r: r.sequence)
        assert [(r.group, r.step) for r in readings] == expected_steps
        assert [r.sequence for r in readings] == list(range(len(expected_steps)))
        # host RSS is real: a Python process with torch imported holds well over 50 MiB
        assert all(r.primary_bytes is not None and r.primary_bytes > 50 * 2**20 for r in readings)
        # the CPU device cannot build GPU communicators; every such step says why
        for r in readings:
            if r.step in ("pynccl", "custom_allreduce"):
                assert r.status == "skipped" and r.note
    # tp's first collective really ran over gloo (width 2; moe_ep is the same group here); width-1 groups ran none
    first_use = {(r.group, r.status) for r in run.readings if r.step == "first_use"}
    assert ("tp", "ok") in first_use and ("pp", "skipped") in first_use
    assert {info.sampling_mode for info in run.record.ranks} == {"host_rss_anon"}
    assert sorted(info.rank for info in run.record.ranks) == [0, 1]
    parts = components_by_rank(run)
    assert set(parts) == {0, 1}
    # the parts add up: the totals are the last readings themselves
    for rank, readings in ((r, [x for x in run.readings if x.rank == r]) for r in range(2)):
        end = max(readings, key=lambda x: x.sequence)
        assert parts[rank]["total_after_first_use"] == end.primary_bytes
    shown = memprobe("report", str(run_dir))
    assert shown.returncode == 0 and "total after first use" in shown.stdout and "MiB" in shown.stdout


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
    assert document["schema_version"] == 2
    from test_json_schemas import problems

    assert problems("comparison", document) == []  # docs/schema/comparison.schema.json, on two scenarios
    # --device cpu skips the CUDA context and every GPU communicator: listed as skipped, no bytes in the summary
    first = document["scenarios"][0]
    assert "tp/pynccl" in first["classes"][first["rank_classes"][0][2]]["skipped"]
    assert {row["cuda_context_bytes"] for row in csv.DictReader((tmp_path / "summary.csv").open())} == {""}
    assert "tp2-ep2-full" in result.stdout and "MiB" in result.stdout
    assert leftover_memprobe_processes(tmp_path) == []


def test_report_rerenders_a_saved_run_without_launching(memprobe, cpu_run):
    again = memprobe("report", str(cpu_run["run_dir"]))
    assert again.returncode == 0, again.stderr
    assert "tp1" in again.stdout and "total after first use" in again.stdout
    assert again.stdout == cpu_run["stdout"]  # the very table the run printed


def test_rank_warnings_reach_the_user(memprobe, tmp_path):
    """A warning a worker records (here: written into a saved run) is printed by report, once."""
    from support import headline_scenarios, synthetic_run

    from memprobe.model.run_files import write_run

    run = synthetic_run(headline_scenarios().scenarios[1])
    for info in run.record.ranks:
        info.warnings.append("GPU GPU-0 is shared with other processes (pids [4242])")
    write_run(tmp_path / "saved", run.record, run.readings)
    result = memprobe("report", "saved")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("is shared with other processes") == 1

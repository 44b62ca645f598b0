"""A gate that never lies: complete data or no verdict, like against like, one scenario one reading.

The run folders here are copies of ONE real CPU comparison per session (``cpu_compare`` in conftest.py:
real torchrun, gloo groups and host-memory readings), cut, duplicated or edited the way the damage
happens; the commands are the real CLI app, run in this process (nothing is launched but where said).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, run_memprobe

from memprobe.analysis.attribution import components_by_rank
from memprobe.cli import main
from memprobe.model.comparison import load_comparison
from memprobe.model.run_files import load_run

MiB = 1 << 20
GPU_BASELINE = ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json"
#: one scenario reads the same alone, inside compare and inside gate within this much, per rank and component
#: (docs/gate.md, "Like against like"); measured on 2 busy cores: 0.13 MiB at worst
SAME_SCENARIO_NOISE_BYTES = 4 * MiB


@pytest.fixture()
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    for name in list(os.environ):
        if name.startswith("MEMPROBE_"):
            monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture()
def complete(cpu_compare, here) -> Path:
    """R: a copy of the complete `--tp 2` CPU run of the session's comparison."""
    folder, result = cpu_compare
    assert result.returncode == 0, result.stderr
    shutil.copytree(folder / "memprobe-runs" / "c" / "tp2", here / "R")
    return Path("R")


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def memprobe(*args: object) -> Result:
    """The real CLI entry point (``memprobe.cli.main``: every outcome mapped to its exit code), in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return Result(code, out.getvalue(), err.getvalue())


def one_line_error(result, code: int, *expected: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def copy_run(source: Path, name: str) -> Path:
    shutil.copytree(source, name)
    return Path(name)


def keep_lines(path: Path, count: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:count]), encoding="utf-8")


def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


def baseline_of(run: Path, out: str = "b.json") -> Path:
    made = memprobe("baseline", "update", "--from", run, "--out", out)
    assert made.exit_code == 0, made.stderr
    return Path(out)


def refused_everywhere(damaged: Path, code: int, *expected: str, good: Path) -> None:
    """report, baseline update and gate each refuse ``damaged`` with one line; no baseline is written."""
    one_line_error(memprobe("report", damaged), code, *expected)
    one_line_error(memprobe("baseline", "update", "--from", damaged, "--out", "new.json"), code, *expected)
    assert not Path("new.json").exists()
    baseline = baseline_of(good, "good.json")
    gate = memprobe("gate", "--baseline", baseline, "--results", damaged)
    assert gate.exit_code == code, (gate.stdout, gate.stderr)
    assert "PASS" not in gate.stdout
    assert all(text in (gate.stderr + gate.stdout) for text in expected), gate.stdout + gate.stderr


# --------------------------------------------------------------------------- complete data or no verdict


def test_a_readings_csv_cut_after_rank_0_is_refused_by_report_baseline_and_gate(complete):
    truncated = copy_run(complete, "T")
    keep_lines(truncated / "readings.csv", 36)  # the header and rank 0's 35 readings
    refused_everywhere(truncated, 2, "T/readings.csv", "no readings of rank 1", good=complete)


def test_a_readings_csv_cut_inside_a_rank_names_the_steps_it_lacks(complete):
    truncated = copy_run(complete, "T")
    keep_lines(truncated / "readings.csv", 30)
    one_line_error(memprobe("report", truncated), 2, "T/readings.csv", "rank 0 has no reading of")


def test_duplicated_rows_are_refused_not_read_as_zero(complete):
    doubled = copy_run(complete, "D")
    header, *rows = (doubled / "readings.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (doubled / "readings.csv").write_text(header + "".join(row + row for row in rows), encoding="utf-8")
    refused_everywhere(doubled, 2, "D/readings.csv:3", "duplicated rows", good=complete)


def test_a_run_whose_memprobe_died_is_refused_as_never_finished(complete):
    died = copy_run(complete, "U")
    (died / "readings.csv").unlink()
    edit_json(died / "run.json", lambda record: record.update(status="running"))
    refused_everywhere(died, 3, "U/run.json", "status running", good=complete)


def test_a_comparison_with_a_scenario_that_never_finished_shows_the_rest_and_fails(cpu_compare, here):
    folder, _ = cpu_compare
    comparison = Path(shutil.copytree(folder / "memprobe-runs" / "c", "C"))
    (comparison / "tp2-ep2-full" / "readings.csv").unlink()
    edit_json(comparison / "tp2-ep2-full" / "run.json", lambda record: record.update(status="running"))
    report = memprobe("report", comparison)
    one_line_error(report, 3, "tp2-ep2-full", "status running")
    assert "tp2" in report.stdout
    one_line_error(memprobe("baseline", "update", "--from", comparison, "--out", "new.json"), 3, "status running")
    assert not Path("new.json").exists()


def test_a_baseline_missing_a_rank_is_refused(complete):
    baseline = baseline_of(complete)
    edit_json(baseline, lambda document: document["scenarios"]["tp2"]["ranks"].pop("1"))
    one_line_error(memprobe("gate", "--baseline", baseline, "--results", complete), 2, "b.json",
                   "scenarios.tp2.ranks lacks rank 1")


def test_a_metric_the_results_hold_and_the_baseline_lacks_is_never_a_pass(complete):
    baseline = baseline_of(complete)

    def drop(document):
        for metrics in document["scenarios"]["tp2"]["ranks"].values():
            del metrics["tp/first_use"]

    edit_json(baseline, drop)
    gate = memprobe("gate", "--baseline", baseline, "--results", complete)
    assert gate.exit_code == 3, gate.stdout + gate.stderr
    assert "tp2 rank 0: no result (the baseline holds no value for tp/first_use)" in gate.stdout


@pytest.mark.parametrize("value, problem", [("-6387220580", ">= 0"), ("nan", "whole number"), ("inf", "whole number")])
def test_negative_or_non_finite_bytes_in_readings_are_refused(complete, value, problem):
    damaged = copy_run(complete, "N")
    rows = list(csv.DictReader(io.StringIO((damaged / "readings.csv").read_text(encoding="utf-8"))))
    rows[5]["primary_bytes"] = value
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (damaged / "readings.csv").write_text(buffer.getvalue(), encoding="utf-8")
    refused_everywhere(damaged, 2, "N/readings.csv:7", "primary_bytes", problem, good=complete)


@pytest.mark.parametrize("value, problem", [(-6387220580, ">= 0"), (math.nan, "integer"), (math.inf, "integer")])
def test_negative_or_non_finite_bytes_in_a_baseline_are_refused(complete, value, problem):
    baseline = baseline_of(complete)
    edit_json(baseline, lambda document: document["scenarios"]["tp2"]["ranks"]["0"].update({"tp/groups_created": value}))
    one_line_error(memprobe("gate", "--baseline", baseline, "--results", complete), 2,
                   "scenarios.tp2.ranks.0.tp/groups_created", problem)


def test_report_of_a_committed_incomplete_run_shows_it_and_exits_3(here):
    report = memprobe("report", ROOT / "results" / "h200x4-20261127" / "failures" / "interrupted")
    one_line_error(report, 3, "interrupted/run.json", "is incomplete")
    assert "status incomplete" in report.stdout


# --------------------------------------------------------------------------- like against like


def test_a_gpu_baseline_never_judges_host_memory_even_with_allow_env_mismatch(complete):
    for args in (["--device", "cpu"], ["--device", "cpu", "--allow-env-mismatch"]):
        gate = memprobe("gate", "--baseline", GPU_BASELINE, *args)  # refused before anything is launched
        one_line_error(gate, 4, "holds GPU memory (NVML)", "host memory")
        assert gate.stdout == ""
    lean = copy_run(complete, "tp4-ep2-lean")  # host bytes under the GPU baseline's scenario name
    edit_json(lean / "run.json", lambda record: (record.update(scenario="tp4-ep2-lean"), record["definition"].update(name="tp4-ep2-lean")))
    gate = memprobe("gate", "--baseline", GPU_BASELINE, "--results", lean, "--allow-env-mismatch")
    one_line_error(gate, 4, "holds GPU memory (NVML)", "hold host memory")
    assert "improvement" not in gate.stdout


def test_baseline_update_never_puts_host_memory_into_a_gpu_baseline(complete):
    baseline = Path(shutil.copy(GPU_BASELINE, "gpu.json"))
    before = baseline.read_bytes()
    one_line_error(memprobe("baseline", "update", "--out", baseline, "--device", "cpu"), 4, "holds GPU memory")
    one_line_error(memprobe("baseline", "update", "--out", baseline, "--from", complete), 4, "holds GPU memory")
    assert baseline.read_bytes() == before


def test_a_baseline_file_never_mixes_kinds_of_memory(complete):
    host = json.loads(baseline_of(complete).read_text())
    gpu = json.loads(GPU_BASELINE.read_text())
    host["scenarios"].update(gpu["scenarios"])
    Path("mixed.json").write_text(json.dumps(host))
    one_line_error(memprobe("gate", "--baseline", "mixed.json", "--results", complete), 2, "mixes kinds of memory",
                   "tp2 host_rss_anon", "tp4-ep2-lean gpu")


# --------------------------------------------------------------------------- exports say what they hold


def test_csv_exports_carry_device_and_sampling_mode_and_every_format_leaves_skipped_steps_empty(cpu_compare):
    folder, result = cpu_compare
    assert result.returncode == 0, result.stderr
    long_rows = list(csv.DictReader((folder / "long.csv").open(encoding="utf-8")))
    summary_rows = list(csv.DictReader((folder / "summary.csv").open(encoding="utf-8")))
    for rows in (long_rows, summary_rows):
        assert {(row["device"], row["sampling_mode"]) for row in rows} == {("cpu", "host_rss_anon")}
    skipped = [row for row in long_rows if row["status"] == "skipped" and row["step"] == "pynccl"]
    assert skipped and {row["added_bytes"] for row in skipped} == {""}  # not measured: empty, not 0
    assert {row["cuda_context_bytes"] for row in summary_rows} == {""}
    document = json.loads((folder / "all.json").read_text())
    tp2_scenario = document["scenarios"][0]
    tp2 = tp2_scenario["classes"][tp2_scenario["rank_classes"][0][2]]["components"]  # rank 0's class
    assert tp2["tp/pynccl"] is None and tp2["cuda_context"] is None  # null, as the CSVs leave it empty
    assert tp2["tp/groups_created"] is not None and tp2["total_after_first_use"] > 0


# --------------------------------------------------------------------------- one scenario, one reading


def test_one_scenario_reads_the_same_alone_inside_compare_and_inside_gate(cpu_compare, here):
    """The baseline comes from the comparison (each scenario in a process forked from its rank's launcher); the
    gate measures one scenario, a launch of its own, in the launcher itself as `memprobe run` does. One real
    torchrun launch."""
    folder, _ = cpu_compare
    compared = folder / "memprobe-runs" / "c"
    baseline = baseline_of(compared)
    judged = run_memprobe("gate", "--baseline", str(baseline), "--device", "cpu", "-s", "tp2-ep2-full", "--out-dir",
                          "g", "--json", "gate.json", cwd=here)
    assert judged.returncode == 0, judged.stdout + judged.stderr
    assert "PASS" in judged.stdout
    [gate_run] = [path.parent for path in Path("g").rglob("tp2-ep2-full/run.json")]
    alone, inside = components_by_rank(load_run(gate_run)), components_by_rank(load_run(compared / "tp2-ep2-full"))
    [started] = [json.loads(line) for line in (gate_run / "ranks" / "rank-00000.jsonl").read_text().splitlines()
                 if json.loads(line)["type"] == "started"]
    assert started["process"] == "launcher"  # the other launch shape than the comparison's forked children
    assert set(alone) == set(inside) == {0, 1}
    for rank in alone:
        assert set(alone[rank]) == set(inside[rank])
        for metric, value in alone[rank].items():
            assert abs(value - inside[rank][metric]) <= SAME_SCENARIO_NOISE_BYTES, (rank, metric, value, inside[rank][metric])
    assert load_comparison(compared).get("tp2-ep2-full").run.record.environment["sampling_mode"] == "host_rss_anon"


def test_memory_kind_is_one_function_for_runs_and_baselines_and_judge_never_waives_it():
    """Unit test on synthetic records (tests/support.py): the kind follows the sampling mode, a baseline of two
    kinds is MIXED, and the pure judge keeps a scenario of another kind unjudged even with allow_env_mismatch."""
    from dataclasses import replace

    from support import ENVIRONMENT, synthetic_comparison

    from memprobe.gate.baseline import build_baseline, parse_document
    from memprobe.gate.judge import judge
    from memprobe.model.memory_kind import GPU, HOST_RSS, HOST_RSS_ANON, MIXED, memory_kind

    gpu = synthetic_comparison()
    document = build_baseline(gpu)
    assert memory_kind(gpu.runs[0].run) == memory_kind(document) == memory_kind(parse_document(document, "b")) == GPU
    host = synthetic_comparison(environment=dict(ENVIRONMENT, sampling_mode="host_rss_anon"))
    for item in host.runs:
        item.run.record = replace(item.run.record, device="cpu")
    assert memory_kind(host.runs[0].run) == HOST_RSS_ANON
    assert memory_kind({"scenarios": {"a": {"environment_key": {"sampling_mode": "host_rss"}},
                                      "b": {"environment_key": {"sampling_mode": "process"}}}}) == MIXED
    assert memory_kind({"environment_key": {"sampling_mode": "host_rss"}}) == HOST_RSS
    result = judge(parse_document(document, "b"), host, allow_env_mismatch=True)
    assert int(result.exit_code) == 4 and not result.findings
    assert result.to_dict()["memory_kind"] == GPU  # every verdict says what kind of bytes it judged
    assert all(not item.compared and item.kind_changed for item in result.incomparable)
    assert "another kind of memory (memory_kind gpu -> host_rss_anon, sampling_mode process -> host_rss_anon)" in result.incomparable[0].line()

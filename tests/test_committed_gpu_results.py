"""Checks over the GPU runs committed under results/ (4 x NVIDIA H200, see results/README.md).

These read real measurements made by memprobe on GPUs; they assert what the README and docs/ say of
them, and that report and gate work on saved runs without GPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memprobe.analysis.attribution import components_by_rank
from memprobe.model.comparison import load_comparison

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "h200x4-20261127"
BASELINE = ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json"
MiB = 1 << 20


@pytest.fixture(scope="module")
def headline():
    return load_comparison(RESULTS / "compare-tp4-ep2")


def test_committed_headline_is_complete_and_per_process(headline):
    assert headline.names() == ["tp4", "tp4-ep2-full", "tp4-ep2-lean"]
    for item in headline.runs:
        record = item.run.record
        assert record.status == "complete"
        assert record.environment["gpu_model"] == "NVIDIA H200"
        assert record.environment["sampling_mode"] == "process"
        assert record.environment["nccl_env"]["NCCL_CUMEM_ENABLE"] == "0"
        assert sorted({r.rank for r in item.run.readings}) == [0, 1, 2, 3]


def test_lean_saves_each_moe_group_its_pynccl_and_custom_allreduce_on_every_rank(headline):
    full = components_by_rank(headline.get("tp4-ep2-full").run)
    lean = components_by_rank(headline.get("tp4-ep2-lean").run)
    for rank in range(4):
        for group in ("moe_ep", "moe_tp"):
            assert full[rank][f"{group}/pynccl"] > 400 * MiB  # one eager, warmed NCCL communicator
            assert full[rank][f"{group}/custom_allreduce"] >= 80 * MiB  # v2 workspace for a 2-GPU group (80 MiB + graph table)
            assert lean[rank][f"{group}/pynccl"] == 0 and lean[rank][f"{group}/custom_allreduce"] == 0
        saved = full[rank]["total_after_first_use"] - lean[rank]["total_after_first_use"]
        assert saved > 1000 * MiB
        # the lazy torch NCCL communicator of each MoE group is still paid on first use, in both stacks
        assert abs(full[rank]["moe_ep/first_use"] - lean[rank]["moe_ep/first_use"]) <= 2 * MiB


def test_ranks_differ_with_cumem_off(headline):
    totals = {rank: parts["total_after_first_use"] for rank, parts in components_by_rank(headline.get("tp4").run).items()}
    assert max(totals.values()) - min(totals.values()) > 500 * MiB


def test_report_rerenders_the_committed_comparison(memprobe):
    result = memprobe("report", str(RESULTS / "compare-tp4-ep2"))
    assert result.returncode == 0, result.stderr
    assert "lean saves on --tp 4 --ep 2" in result.stdout
    assert "tp4-ep2-full" in result.stdout and "NVIDIA H200" in result.stdout


def test_gate_passes_the_committed_lean_run(memprobe):
    result = memprobe("gate", "--baseline", str(BASELINE), "--results", str(RESULTS / "compare-tp4-ep2" / "tp4-ep2-lean"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


def test_a_stack_file_named_lean_with_other_flags_does_not_pass_for_lean(memprobe):
    """regressed-lean was measured with a stack file named "lean" giving the MoE groups their full stack.
    Its identity holds the flags, so the gate refuses to judge it as lean (exit 4) and names the flags
    that differ."""
    result = memprobe("gate", "--baseline", str(BASELINE), "--results", str(RESULTS / "runs" / "regressed-lean"))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "the scenario definition changed" in result.stdout
    for group in ("moe_ep", "moe_tp"):
        for flag in ("pynccl", "custom_allreduce"):
            assert f"definition.stack.groups.{group}.{flag} false -> true" in result.stdout


# ------------------------------------------- one launch for every scenario (2 x NVIDIA H200)

ONE_LAUNCH_BENCH = ROOT / "results" / "h200x2-issue16-20261128"


def test_the_three_scenario_benchmark_meets_both_targets_in_one_launch_and_the_docs_quote_it():
    import json

    bench = json.loads((ONE_LAUNCH_BENCH / "bench-three" / "bench.json").read_text())
    assert bench["reference_launches"] == 3 and bench["gpu"] == "NVIDIA H200"
    assert bench["ratio"] <= 0.45 and bench["ratio_to_one_run"] <= 1.4
    assert bench["side_by_side_max_reading_difference_bytes"] == 0
    assert all(d == 0 for per in bench["footprint_bytes"].values() for d in per.values())
    comparison = load_comparison(ONE_LAUNCH_BENCH / "bench-three" / "memprobe" / "compare")
    names = comparison.names()
    assert len(names) == 3 and all(list(item.run.record.launch.scenarios) == names for item in comparison.runs)
    performance = (ROOT / "docs" / "performance.md").read_text()
    for figure in (f"**{bench['ratio']:.2f}**", f"**{bench['ratio_to_one_run']:.2f}**", f"{bench['memprobe_compare_s']:.1f} s",
                   f"{bench['reference_launches_s']:.1f} s"):
        assert figure in performance, figure


def test_one_launch_reads_the_bytes_of_the_runs_made_with_a_launch_per_scenario():
    """Recomputed from the committed runs (tools/same_readings.py), not read from its output file."""
    import subprocess
    import sys

    earlier, now = ROOT / "results" / "h200x2-sglang-20261128" / "runs" / "compare", ONE_LAUNCH_BENCH / "sglang" / "runs" / "compare"
    smoke = ROOT / "results" / "h200x2-20261128" / "final-smoke" / "runs" / "compare"
    pairs = [str(p) for name in ("tp2", "tp2-ep2-full", "tp2-ep2.sglang-0.5.10.post1", "tp2-ep2.sglang-0.5.11",
                                 "tp2-ep2.sglang-0.5.23") for p in (earlier / name, now / name)]
    pairs += [str(smoke / "tp2-ep2-full"), str(ONE_LAUNCH_BENCH / "bench-three" / "memprobe" / "compare" / "tp2-ep2-full")]
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "same_readings.py"), *pairs], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("same keys True, largest difference 0 bytes") == 6

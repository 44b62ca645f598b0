"""memprobe against the minimal reference script, on one GPU machine, in one go.

    python bench/run_bench.py --tp 4 --ep 2 --repeats 5 --out results/bench/NAME
    python bench/run_bench.py --scenarios bench/three-on-two-gpus.toml --tp 2 --ep 2 --repeats 0 --out results/bench/NAME

1. speed: ``memprobe compare --tp T --ep E`` (its scenarios side by side: three, or two where lean measures the
   same as full) against as many back-to-back torchrun launches of ``bench/reference.py`` building the same
   groups and communicators (target ratio
   <= 0.45) and against one ``memprobe run --tp T --ep E --stack full`` (target <= 1.4); ``--jobs 1``
   (one after another) for reference, its readings byte-identical to side by side; the per-phase
   timings of both comparisons;
2. repeatability: ``memprobe run`` of the lean MoE scenario N times; the spread of every
   (rank, group, step) reading across repeats;
3. footprint: memprobe's per-rank total after first use against the reference's, per scenario.

Writes ``bench.json`` and ``bench.txt`` (the printed table) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memprobe.analysis.attribution import components_by_rank  # noqa: E402
from memprobe.model.comparison import load_comparison  # noqa: E402
from memprobe.model.records import load_run  # noqa: E402
from memprobe.reports.timings import timing_lines  # noqa: E402

MiB = 1 << 20


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tp", type=int, default=4)
    parser.add_argument("--ep", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenarios", type=Path, help="compare this scenario file instead of --tp/--ep's scenarios "
                        "(each scenario's env also reaches its reference launch)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), NCCL_CUMEM_ENABLE=os.environ.get("NCCL_CUMEM_ENABLE", "0"),
               NCCL_NVLS_ENABLE=os.environ.get("NCCL_NVLS_ENABLE", "0"), TORCH_NCCL_AVOID_RECORD_STREAMS="1",
               CUDA_DEVICE_MAX_CONNECTIONS="8", CUDA_DEVICE_ORDER="PCI_BUS_ID", OMP_NUM_THREADS="1")
    memprobe = [sys.executable, "-m", "memprobe"]
    # 1. speed (+ the runs used for the footprint)
    one_run_s = timed([*memprobe, "run", "--tp", str(args.tp), "--ep", str(args.ep), "--stack", "full", "--quiet",
                       "--out-dir", str(out / "memprobe"), "--run-id", "one-run"], env)
    chosen = ["--scenarios", str(args.scenarios.resolve())] if args.scenarios else ["--tp", str(args.tp), "--ep", str(args.ep)]
    memprobe_s = timed([*memprobe, "compare", *chosen, "--quiet",
                        "--out-dir", str(out / "memprobe"), "--run-id", "compare"], env)
    parallel = comparison = load_comparison(out / "memprobe" / "compare")
    jobs_s = timed([*memprobe, "compare", *chosen, "--quiet", "--jobs", "1",
                    "--out-dir", str(out / "memprobe"), "--run-id", "compare-jobs1"], env)
    sequential = load_comparison(out / "memprobe" / "compare-jobs1")
    reference_s = 0.0
    reference: dict[str, dict[int, int]] = {}
    for item in comparison.runs:
        layout, stack = item.scenario.layout, item.scenario.stack
        jsonl = out / f"reference-{item.scenario.name}.jsonl"
        jsonl.unlink(missing_ok=True)
        reference_s += timed([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={layout.world_size}",
                              "bench/reference.py", "--tp", str(layout.tp), "--ep", str(layout.ep), "--stack", stack, str(jsonl)],
                             {**env, **item.scenario.env})
        reference[item.scenario.name] = {int(line["rank"]): line["process_bytes"]
                                          for line in map(json.loads, jsonl.read_text().splitlines())}
    # 2. repeatability
    repeat_runs = []
    for index in range(args.repeats):
        run_id = f"repeat-{index}"
        timed([*memprobe, "run", "--tp", str(args.tp), "--ep", str(args.ep), "--stack", "lean", "--quiet",
               "--out-dir", str(out / "memprobe"), "--run-id", run_id], env)
        repeat_runs.append(load_run(out / "memprobe" / run_id))
    values: dict[tuple[int, str, str], list[int]] = {}
    for run in repeat_runs:
        for reading in run.readings:
            if reading.primary_bytes is not None:
                values.setdefault((reading.rank, reading.group, reading.step), []).append(reading.primary_bytes)
    spreads = {key: max(v) - min(v) for key, v in values.items()} or {(0, "", "none"): 0}
    worst_key = max(spreads, key=spreads.get)
    # 3. footprint
    footprint = {}
    for item in comparison.runs:
        totals = {rank: parts["total_after_first_use"] for rank, parts in components_by_rank(item.run).items()}
        footprint[item.scenario.name] = {rank: totals[rank] - reference[item.scenario.name][rank] for rank in totals}
    worst_footprint = max(abs(d) for per in footprint.values() for d in per.values())
    # side by side against one after another: every per-process reading must be the same, to the byte
    jobs_difference = max(
        abs(a.primary_bytes - b.primary_bytes)
        for one, other in zip(sequential.runs, parallel.runs)
        for a, b in zip(sorted(one.run.readings, key=lambda r: (r.rank, r.sequence)),
                        sorted(other.run.readings, key=lambda r: (r.rank, r.sequence)))
        if a.primary_bytes is not None and b.primary_bytes is not None
    )
    gpu = comparison.runs[0].run.record.environment.get("gpu_model", "")
    lines = [
        f"memprobe bench on {comparison.runs[0].run.record.environment.get('gpu_count', '?')} x {gpu} "
        f"({'scenarios ' + args.scenarios.name if args.scenarios else f'tp {args.tp}, ep {args.ep}'}); card: {gpu}",
        f"speed: {len(comparison.runs)} reference launches back to back (one per scenario compare ran) {reference_s:.1f} s; one memprobe run (full) {one_run_s:.1f} s; "
        f"memprobe compare (side by side) {memprobe_s:.1f} s; compare --jobs 1 {jobs_s:.1f} s",
        f"  ratio compare / {len(comparison.runs)} reference launches {memprobe_s / reference_s:.2f} (target <= 0.45); "
        f"compare / one run {memprobe_s / one_run_s:.2f} (target <= 1.4); --jobs 1 / {len(comparison.runs)} reference launches {jobs_s / reference_s:.2f}",
        f"repeatability: {args.repeats} repeats, worst spread {spreads[worst_key] / MiB:.1f} MiB at rank {worst_key[0]} "
        f"{worst_key[1] or '-'}/{worst_key[2]} over {len(spreads)} (rank, group, step) readings (target <= 2 MiB)",
        "footprint: memprobe total after first use minus reference total, per scenario, worst rank:",
    ]
    for name, per in footprint.items():
        worst = max(per.values(), key=abs)
        lines.append(f"  {name}: {worst / MiB:+.1f} MiB (ranks: {', '.join(f'{r}: {d / MiB:+.1f}' for r, d in sorted(per.items()))})")
    lines.append(f"footprint worst |difference| {worst_footprint / MiB:.1f} MiB (target <= 2 MiB)")
    lines.append(f"side by side against --jobs 1: largest difference of any reading {jobs_difference} bytes "
                 f"({'byte-identical' if jobs_difference == 0 else 'NOT identical'})")
    for title, which in (("side by side", parallel), ("one after another (--jobs 1)", sequential)):
        lines.append(f"per-phase timings, {title}:")
        for item in which.runs:
            lines += ["  " + line for line in timing_lines(item.scenario.name, item.run.record.timings)]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (out / "bench.txt").write_text(text)
    document = {
        "gpu": gpu, "tp": args.tp, "ep": args.ep, "memprobe_compare_s": memprobe_s, "reference_launches_s": reference_s, "reference_launches": len(comparison.runs),
        "ratio": memprobe_s / reference_s, "memprobe_run_full_s": one_run_s, "ratio_to_one_run": memprobe_s / one_run_s,
        "memprobe_compare_jobs1_s": jobs_s, "ratio_jobs1": jobs_s / reference_s,
        "side_by_side_max_reading_difference_bytes": jobs_difference,
        "timings": {mode: {item.scenario.name: item.run.record.timings for item in which.runs}
                    for mode, which in (("side_by_side", parallel), ("jobs1", sequential))}, "repeats": args.repeats,
        "max_spread_bytes": spreads[worst_key], "max_spread_at": list(worst_key),
        "footprint_bytes": {name: {str(r): d for r, d in per.items()} for name, per in footprint.items()},
        "reference_process_bytes": {name: {str(r): v for r, v in per.items()} for name, per in reference.items()},
        "environment": comparison.runs[0].run.record.environment,
    }
    (out / "bench.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

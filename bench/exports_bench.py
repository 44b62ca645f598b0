"""How long memprobe's exports and per-rank tables take at scale, as whole processes, and how much memory they hold.

Run it on a quiet machine (``uptime``: a load average well under the CPU count), from the repository root:

    python bench/exports_bench.py --repeats 5 --out results/bench-exports-NAME/cpu-2core

Each case runs ``python -m memprobe ...`` in a fresh process (exports into a temporary folder, removed after each run)
and records, per run, its wall time, its CPU time (user + system of the whole process, from ``wait4``: what the
process itself spent, little moved by other work on the machine), the 1-minute load average just before it started,
and the process's peak resident memory (``ru_maxrss``). Targets (seconds, met by the median):

* ``estimate --tp 8 --pp 512 --ep 4`` (4096 ranks, three scenarios) with ``--json --csv --markdown``: under 2 s, and a
  JSON under 10 MB; ``--per-rank``: under 5 s;
* ``estimate --tp 65536 --ep 8`` and ``--tp 8 --pp 8192 --ep 4`` (65536 ranks) with every export (JSON, CSV, summary
  CSV, Markdown): under 60 s and 2 GB;
* the same for ``report`` of measured runs whose ranks read alike: a comparison folder of 4096-rank runs is made once
  from the 4096-rank estimate by memprobe's own writers, its records marked measured (every rank's readings written
  out in readings.csv, as a measured run holds them), and reported with the exports and with ``--per-rank``.

Each line gives the verdict on wall time and on CPU time. On a machine busy with other work (a load average at or
above the CPU count before any run of a case) the wall time measures the other work too: the line says so, and the
CPU time is the figure that holds (a whole process that needs more CPU than its target cannot meet it on any
machine of this speed; one within it should meet it on a quiet one, where wall time is about CPU time plus the
waits on disk).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ESTIMATE_4096 = ["estimate", "--tp", "8", "--pp", "512", "--ep", "4"]
EXPORTS = ["--json", "{out}/e.json", "--csv", "{out}/e.csv", "--markdown", "{out}/e.md"]
ALL_EXPORTS = EXPORTS + ["--summary-csv", "{out}/s.csv"]
# (label, arguments, wall-time target s, memory target MiB, the JSON's size target MB or None)
CASES = [
    ("estimate, 4096 ranks, --json --csv --markdown", ESTIMATE_4096 + EXPORTS, 2, None, 10),
    ("estimate, 4096 ranks, --per-rank", ESTIMATE_4096 + ["--per-rank"], 5, None, None),
    ("estimate, 65536 ranks (--tp 65536 --ep 8), every export", ["estimate", "--tp", "65536", "--ep", "8"] + ALL_EXPORTS,
     60, 2048, None),
    ("estimate, 65536 ranks (--tp 8 --pp 8192 --ep 4), every export",
     ["estimate", "--tp", "8", "--pp", "8192", "--ep", "4"] + ALL_EXPORTS, 60, 2048, None),
    ("report, measured 4096-rank runs that read alike, --json --csv --markdown", ["report", "{measured}"] + EXPORTS,
     2, None, 10),
    ("report, measured 4096-rank runs that read alike, --per-rank", ["report", "{measured}", "--per-rank"], 5, None, None),
]
MEASURED_MAKER = """
import sys
from dataclasses import replace
from pathlib import Path
from memprobe import api
from memprobe.model.comparison import write_comparison_index
from memprobe.model.run_files import write_run
from memprobe.model.scenario import ScenarioSet
out = Path(sys.argv[1])
comparison = api.estimate(tp=8, pp=512, ep=4)
for item in comparison.runs:
    record = replace(item.run.record, source="measured", run_id=item.scenario.name,
                     environment={**item.run.record.environment, "sampling_mode": "process"})
    record.environment.pop("estimate", None)
    write_run(out / item.scenario.name, record, item.run.all_readings())
scenarios = ScenarioSet([item.scenario for item in comparison.runs], baseline=comparison.baseline)
write_comparison_index(out, "measured-4096", scenarios, {item.scenario.name: item.scenario.name for item in comparison.runs})
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")


def _once(arguments: list[str]) -> dict[str, float | int | None]:
    """One whole process: wall and CPU seconds, peak resident MiB, the JSON's bytes (or None), the load before it."""
    with tempfile.TemporaryDirectory(prefix="memprobe-bench-") as out:
        command = [sys.executable, "-m", "memprobe", *(a.replace("{out}", out) for a in arguments)]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=out, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        stderr = process.stderr.read().decode() if process.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"memprobe {' '.join(arguments)} exited {os.waitstatus_to_exitcode(status)}: {stderr[-300:]}")
        json_path = Path(out) / "e.json"
        return {"seconds": elapsed, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024,
                "json_bytes": json_path.stat().st_size if json_path.is_file() else None, "load_average": load}


def _within(value: float, target: float) -> str:
    return f"{'within' if value < target else 'OVER'} {target} s"


def _versions() -> dict[str, str]:
    def run(*command: str) -> str:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=_env())
        return done.stdout.strip()

    return {
        "memprobe": run(sys.executable, "-m", "memprobe", "--version"),
        "commit": run("git", "describe", "--always", "--dirty", "--abbrev=7"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()),
        "cpus": str(os.cpu_count()),
        "memory_gib": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f}",
        "pythondontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case; the median is the figure (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench.txt and bench.json (else printed only)")
    parser.add_argument("--only", default="", help="run only the cases whose label contains this text")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "memprobe")], check=True)
    versions = _versions()
    cpus = os.cpu_count() or 1
    lines = [f"memprobe exports as whole processes, {args.repeats} runs each, median; {versions['cpus']} CPUs "
             f"({versions['cpu']}), load average {os.getloadavg()[0]:.1f} at start",
             "  " + ", ".join(f"{key} {value}" for key, value in versions.items() if key not in ("cpus", "cpu"))]
    cases: dict[str, object] = {}
    results = {"machine": versions, "load_average_at_start": os.getloadavg()[0], "cases": cases}
    measured = Path(tempfile.mkdtemp(prefix="memprobe-bench-measured-"))
    try:
        subprocess.run([sys.executable, "-c", MEASURED_MAKER, str(measured)], check=True, env=_env(), cwd=ROOT)
        for label, arguments, seconds_target, memory_target, json_target in CASES:
            if args.only not in label:
                continue
            arguments = [a.replace("{measured}", str(measured)) for a in arguments]
            runs = [_once(arguments) for _ in range(args.repeats)]
            times, cpu = [float(r["seconds"]) for r in runs], [float(r["cpu_seconds"]) for r in runs]
            memory, loads = [float(r["peak_mib"]) for r in runs], [float(r["load_average"]) for r in runs]
            json_bytes = runs[-1]["json_bytes"]
            median, cpu_median = statistics.median(times), statistics.median(cpu)
            verdicts = [f"wall {_within(median, seconds_target)}", f"CPU {_within(cpu_median, seconds_target)}"]
            if memory_target is not None:
                verdicts.append(f"{'within' if max(memory) < memory_target else 'OVER'} {memory_target} MiB")
            if json_bytes is not None and json_target is not None:
                verdicts.append(f"JSON {int(json_bytes) / 1e6:.1f} MB, "
                                f"{'within' if int(json_bytes) < json_target * 1e6 else 'OVER'} {json_target} MB")
            busy = max(loads) >= cpus
            lines.append(f"  {label}: wall median {median:.2f} s (min {min(times):.2f}, max {max(times):.2f}), CPU median "
                         f"{cpu_median:.2f} s (min {min(cpu):.2f}, max {max(cpu):.2f}), peak {max(memory):.0f} MiB, load "
                         f"average {min(loads):.1f} to {max(loads):.1f} before its runs; {'; '.join(verdicts)}"
                         + (f" (a busy machine: load at or above its {cpus} CPUs, the wall time counts other work; "
                            f"read the CPU time)" if busy else ""))
            print(lines[-1], flush=True)
            cases[label] = {
                "arguments": [a if a != str(measured) else "MEASURED_4096" for a in arguments],
                "seconds": times, "median_s": median, "cpu_seconds": cpu, "cpu_median_s": cpu_median,
                "load_average_before": loads, "busy": busy, "peak_mib": memory, "json_bytes": json_bytes,
                "targets": {"seconds": seconds_target, "memory_mib": memory_target, "json_mb": json_target}}
    finally:
        shutil.rmtree(measured, ignore_errors=True)
    print("\n".join(lines[:2]))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.txt").write_text("\n".join(lines) + "\n")
        (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long memprobe's exports and per-rank tables take at scale, as whole processes, and how much memory they hold.

    python bench/exports_bench.py --repeats 3 --out results/bench-exports-NAME

Each case runs ``python -m memprobe ...`` in a fresh process (exports into a temporary folder, removed after each run)
and records the wall time, its CPU time (user + system: less disturbed when the machine is shared) and the process's
peak resident memory (``wait4``'s ``ru_maxrss``). Targets (on wall time):

* ``estimate --tp 8 --pp 512 --ep 4`` (4096 ranks, three scenarios) with ``--json --csv --markdown``: under 2 s, and a
  JSON under 10 MB; ``--per-rank``: under 5 s;
* ``estimate --tp 65536 --ep 8`` and ``--tp 8 --pp 8192 --ep 4`` (65536 ranks) with every export (JSON, CSV, summary
  CSV, Markdown): under 60 s and 2 GB;
* the same for ``report`` of measured runs whose ranks read alike: a comparison folder of 4096-rank runs is made once
  from the 4096-rank estimate by memprobe's own writers, its records marked measured (every rank's readings written
  out in readings.csv, as a measured run holds them), and reported with the exports and with ``--per-rank``.

The median of the repeats is the figure (the machine may be shared: the load average at the start is recorded).
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


def _once(arguments: list[str]) -> tuple[float, float, int | None, float]:
    """(seconds, peak resident MiB, the JSON's bytes or None, CPU seconds) of one whole process."""
    with tempfile.TemporaryDirectory(prefix="memprobe-bench-") as out:
        command = [sys.executable, "-m", "memprobe", *(a.replace("{out}", out) for a in arguments)]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=out, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        stderr = process.stderr.read().decode() if process.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"memprobe {' '.join(arguments)} exited {os.waitstatus_to_exitcode(status)}: {stderr[-300:]}")
        json_path = Path(out) / "e.json"
        size = json_path.stat().st_size if json_path.is_file() else None
        return elapsed, usage.ru_maxrss / 1024, size, usage.ru_utime + usage.ru_stime


def _versions() -> dict[str, str]:
    def run(*command: str) -> str:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=_env())
        return done.stdout.strip()

    return {
        "memprobe": run(sys.executable, "-m", "memprobe", "--version"),
        "commit": run("git", "rev-parse", "--short", "HEAD"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()),
        "cpus": str(os.cpu_count()),
        "memory_gib": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f}",
        "pythondontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default="", help="run only the cases whose label contains this text")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "memprobe")], check=True)
    versions = _versions()
    lines = [f"memprobe exports as whole processes, {args.repeats} runs each, median; {versions['cpus']} CPUs "
             f"({versions['cpu']}), load average {os.getloadavg()[0]:.1f} at start (a shared machine: noisy)",
             "  " + ", ".join(f"{key} {value}" for key, value in versions.items() if key not in ("cpus", "cpu"))]
    results: dict[str, object] = {"machine": versions, "load_average_at_start": os.getloadavg()[0], "cases": {}}
    measured = Path(tempfile.mkdtemp(prefix="memprobe-bench-measured-"))
    try:
        subprocess.run([sys.executable, "-c", MEASURED_MAKER, str(measured)], check=True, env=_env(), cwd=ROOT)
        for label, arguments, seconds_target, memory_target, json_target in CASES:
            if args.only not in label:
                continue
            arguments = [a.replace("{measured}", str(measured)) for a in arguments]
            runs = [_once(arguments) for _ in range(args.repeats)]
            times, memory, cpu = [r[0] for r in runs], [r[1] for r in runs], [r[3] for r in runs]
            json_bytes = runs[-1][2]
            median = statistics.median(times)
            verdicts = [f"{'within' if median < seconds_target else 'OVER'} {seconds_target} s"]
            if memory_target is not None:
                verdicts.append(f"{'within' if max(memory) < memory_target else 'OVER'} {memory_target} MiB")
            if json_target is not None and json_bytes is not None:
                verdicts.append(f"JSON {json_bytes / 1e6:.1f} MB, {'within' if json_bytes < json_target * 1e6 else 'OVER'} "
                                f"{json_target} MB")
            lines.append(f"  {label}: median {median:.2f} s (min {min(times):.2f}, max {max(times):.2f}; CPU "
                         f"{statistics.median(cpu):.2f} s), peak {max(memory):.0f} MiB; {'; '.join(verdicts)}")
            print(lines[-1], flush=True)
            results["cases"][label] = {"arguments": [a if a != str(measured) else "MEASURED_4096" for a in arguments], "seconds": times, "median_s": median, "cpu_seconds": cpu, "peak_mib": memory,
                                       "json_bytes": json_bytes, "targets": {"seconds": seconds_target,
                                                                             "memory_mib": memory_target,
                                                                             "json_mb": json_target}}
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

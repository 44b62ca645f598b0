"""How long ``memprobe estimate`` takes as a whole process, and that it never imports torch (no GPU machine needed).

    python bench/estimate_bench.py --repeats 5 --out results/bench-estimate-NAME

Times ``python -m memprobe estimate --tp 8 --pp 512 --ep 4`` (4096 ranks on 512 nodes of 8, three scenarios;
target: under 1 s) and ``--tp 8 --ep 4`` (one node); prints and writes ``bench.txt`` and ``bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = (("4096 ranks", ["--tp", "8", "--pp", "512", "--ep", "4"]), ("8 ranks", ["--tp", "8", "--ep", "4"]))


def _once(flags: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "memprobe", "estimate", *flags], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"memprobe estimate {' '.join(flags)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return elapsed


def _imports_torch(flags: list[str]) -> bool:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "memprobe", "estimate", *flags], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return any(line.split("|")[-1].strip().split(".")[0] == "torch" for line in done.stderr.splitlines() if "|" in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results, lines = {}, [f"memprobe estimate as a whole process, {args.repeats} runs each, {os.cpu_count()} CPUs "
                          f"(load average {os.getloadavg()[0]:.1f} at start)"]
    for label, flags in LAYOUTS:
        times = [_once(flags) for _ in range(args.repeats)]
        torch = _imports_torch(flags)
        results[label] = {"flags": flags, "seconds": times, "median_s": statistics.median(times), "imports_torch": torch}
        lines.append(f"  {label} (memprobe estimate {' '.join(flags)}): median {statistics.median(times):.2f} s, "
                     f"min {min(times):.2f} s, max {max(times):.2f} s; imports torch: {'yes' if torch else 'no'}")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.txt").write_text("\n".join(lines) + "\n")
        (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

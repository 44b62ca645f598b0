#!/usr/bin/env bash
# Issue 16 on GPUs: one torchrun launch for all of a comparison's scenarios, timed against independent
# reference launches (bench/run_bench.py: one run, compare side by side and --jobs 1 with byte-identical
# readings, the reference launches, both ratios, per-phase timings).
#   bash tools/gpu/issue16.sh OUT_FOLDER
# 2 GPUs: --tp 2 --ep 2 (two scenarios) and bench/three-on-two-gpus.toml (three, as compare has on 4 GPUs);
# 4 GPUs: --tp 4 --ep 2 as well. Runtime: about 4 min on 2 GPUs. ONLY=three runs the three-scenario bench alone.
set -u
O=${1:?usage: tools/gpu/issue16.sh OUT_FOLDER}
mkdir -p "$O" && O=$(cd "$O" && pwd)
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 COLUMNS=160 NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD
. tools/gpu_lib.sh
record_environment "$O/environment.txt"
GPUS=$(nvidia-smi -L | wc -l)
LEFT_BEFORE=$(ls -d /tmp/torchelastic_* 2>/dev/null | wc -l)
[ "${ONLY:-}" = three ] || timed "$O/bench-tp2.txt" 400 python3 bench/run_bench.py --tp 2 --ep 2 --repeats 3 --out "$O/bench-tp2"
timed "$O/bench-three.txt" 400 python3 bench/run_bench.py --scenarios bench/three-on-two-gpus.toml --tp 2 --ep 2 --repeats 0 --out "$O/bench-three"
if [ "$GPUS" -ge 4 ]; then
  timed "$O/bench-tp4.txt" 500 python3 bench/run_bench.py --tp 4 --ep 2 --repeats 0 --out "$O/bench-tp4"
fi
{
  echo "launcher threads at fork (per rank and scenario): $(cat "$O"/bench-*/memprobe/*/*/ranks/*.jsonl "$O"/bench-*/memprobe/*/ranks/*.jsonl 2>/dev/null | grep -o '"threads": [0-9]*' | sort | uniq -c | tr '\n' ' ')"
  echo "death-signal lines in torchrun logs: $(cat "$O"/bench-*/memprobe/*/torchrun*.log | grep -c 'death signal')"
  echo "torchelastic folders in /tmp: $LEFT_BEFORE before, $(ls -d /tmp/torchelastic_* 2>/dev/null | wc -l) after (each reference launch leaves one; memprobe's none)"
  echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)"
} > "$O/summary.txt"
cat "$O/summary.txt" "$O"/bench-*.txt

#!/usr/bin/env bash
# Issue 14 on GPUs: NCCL's own account of every communicator and the torch-cache split, with --nccl-log, for the
# SGLang preset (NCCL_CUMEM_ENABLE=0) and for NCCL_CUMEM_ENABLE=1, plus an untraced run (cost of tracing), and
# bench/run_bench.py against the now independent bench/reference.py (about 3 minutes in all).
#   bash tools/gpu/issue14.sh OUT_FOLDER        (TP=2 EP=2 by default: 2 GPUs; TP=4 EP=2 on 4 GPUs)
# With TP=2 EP=2 moe_ep is the tp group's ranks (width 2) and moe_tp has width 1: it shows the account and the
# split on 2-rank communicators only (no rank asymmetry: a 2-rank ring and tree use the one peer).
set -u
O=${1:?usage: issue14.sh OUT_FOLDER}
TP=${TP:-2}
EP=${EP:-2}
mkdir -p "$O/runs"
export PYTHONUNBUFFERED=1 COLUMNS=200
export NCCL_NVLS_ENABLE=0
M="python3 -m memprobe"
. "$(dirname "$0")/../gpu_lib.sh"
record_environment "$O/environment.txt"
run() {  # run NAME ARGS...
  local name=$1; shift
  timed "$O/runs/$name.txt" 120 $M run --tp "$TP" --ep "$EP" --stack full --quiet --out-dir "$O/runs" --run-id "$name" "$@"
}
run plain
run sglang --nccl-log --split
run cumem1 --nccl-log --split --env NCCL_CUMEM_ENABLE=1
for name in sglang cumem1; do
  timed "$O/report-$name.txt" 60 $M report "$O/runs/$name" --split --per-rank --nccl --json "$O/report-$name.json"
done
# accuracy against the independent bench/reference.py (no memprobe code): footprint per rank, 1 repeat
# (BENCH=0 skips it where tools/gpu/issue13_16.sh runs the benchmark in the same campaign)
[ "${BENCH:-1}" = 0 ] || timed "$O/bench.txt" 150 python3 bench/run_bench.py --tp "$TP" --ep "$EP" --repeats 1 --out "$O/bench"
du -sh "$O"/runs/*/nccl >> "$O/environment.txt" 2>&1
echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$O/environment.txt"

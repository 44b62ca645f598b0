#!/usr/bin/env bash
# The merged tree end to end on the GPUs of one node (after issues 12-17): compare with the split, the timings
# and a plot; a baseline from it and the gate measuring again (expect exit 0); on 2 GPUs the three scenarios of
# bench/three-on-two-gpus.toml in one launch (issue 16); one run with NCCL's account.
#   bash tools/gpu/final_smoke.sh OUT_FOLDER        (TP=2 EP=2 by default)
set -u
O=${1:?usage: final_smoke.sh OUT_FOLDER}
TP=${TP:-2}
EP=${EP:-2}
mkdir -p "$O"
export PYTHONUNBUFFERED=1 COLUMNS=160 NCCL_NVLS_ENABLE=0
M="python3 -m memprobe"
. "$(dirname "$0")/../gpu_lib.sh"
record_environment "$O/environment.txt"
timed "$O/compare.txt" 150 $M compare --tp "$TP" --ep "$EP" --split --timings --quiet --out-dir "$O/runs" --run-id compare \
  --plot "$O/compare.png" --json "$O/compare.json"
timed "$O/baseline.txt" 30 $M baseline update --from "$O/runs/compare" --out "$O/baseline.json"
timed "$O/gate.txt" 150 $M gate --baseline "$O/baseline.json" --out-dir "$O/runs/gate" --markdown "$O/gate.md"
[ "$TP" = 2 ] && timed "$O/compare-three.txt" 150 $M compare --scenarios bench/three-on-two-gpus.toml --timings --quiet \
  --out-dir "$O/runs" --run-id compare-three
timed "$O/run-nccl.txt" 120 $M run --tp "$TP" --ep "$EP" --stack full --nccl-log --quiet --out-dir "$O/runs" --run-id run-nccl
grep -h "exit code" "$O"/*.txt > "$O/exit-codes.txt"
echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$O/environment.txt"

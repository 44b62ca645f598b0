#!/usr/bin/env bash
# Second GPU session: the three issue-2 runs, SIGINT on GPUs, and the bench (issue 6).
#   bash tools/gpu_campaign2.sh results/<name>
set -u
R=${1:?usage: gpu_campaign2.sh RESULTS_FOLDER}
mkdir -p "$R/runs"
export PYTHONUNBUFFERED=1 COLUMNS=160
M="python3 -m memprobe"
$M run --tp 4 --quiet --out-dir "$R/runs" --run-id tp4-lean > "$R/runs/tp4-lean.txt" 2>&1
$M run --tp 4 --ep 2 --stack full --quiet --out-dir "$R/runs" --run-id tp4-ep2-full > "$R/runs/tp4-ep2-full.txt" 2>&1
$M run --tp 4 --ep 2 --stack lean --quiet --out-dir "$R/runs" --run-id tp4-ep2-lean > "$R/runs/tp4-ep2-lean.txt" 2>&1
F="$R/failures-sigint.txt"; : > "$F"
echo "== SIGINT while rank 0 hangs at moe_ep/groups_created" >> "$F"
# A background job of a non-interactive shell ignores SIGINT; restore the default before exec.
MEMPROBE_TEST_FAULT=0:moe_ep/groups_created:hang python3 -c 'import os,signal,sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
  python3 -m memprobe run --tp 4 --ep 2 --quiet --out-dir "$R/failures" --run-id interrupted >> "$F" 2>&1 &
p=$!; for i in $(seq 90); do grep -q moe_ep "$R/failures/interrupted/ranks/rank-00001.jsonl" 2>/dev/null && break; sleep 1; done
s=$(date +%s); kill -INT $p; wait $p; echo "exit code $? $(( $(date +%s) - s )) s after SIGINT" >> "$F"
echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$F"
python3 bench/run_bench.py --tp 4 --ep 2 --repeats 5 --out "$R/bench" > "$R/bench.txt" 2>&1
find "$R" -name torchrun.log -size +2M -delete

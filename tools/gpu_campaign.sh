#!/usr/bin/env bash
# The GPU runs quoted by the README, in one go on a 4-GPU machine:
#   bash tools/gpu_campaign.sh results/<name>
# Writes runs, comparisons, a gate baseline demonstration and failure-handling logs under the folder.
set -u
R=${1:?usage: gpu_campaign.sh RESULTS_FOLDER}
mkdir -p "$R/runs"
export PYTHONUNBUFFERED=1 COLUMNS=160
M="python3 -m memprobe"
. "$(dirname "$0")/gpu_lib.sh"
record_environment "$R/environment.txt"
# issue 2: one run per scenario
$M run --tp 4 --quiet --out-dir "$R/runs" --run-id tp4-lean > "$R/runs/tp4-lean.txt" 2>&1 || true
$M run --tp 4 --ep 2 --stack full --quiet --out-dir "$R/runs" --run-id tp4-ep2-full > "$R/runs/tp4-ep2-full.txt" 2>&1
$M run --tp 4 --ep 2 --stack lean --quiet --out-dir "$R/runs" --run-id tp4-ep2-lean > "$R/runs/tp4-ep2-lean.txt" 2>&1
# issue 3: the headline comparison and the NCCL knobs
$M compare --tp 4 --ep 2 --quiet --out-dir "$R" --run-id compare-tp4-ep2 --csv "$R/compare-tp4-ep2.csv" \
  --summary-csv "$R/compare-tp4-ep2-summary.csv" --json "$R/compare-tp4-ep2.json" --markdown "$R/compare-tp4-ep2.md" \
  > "$R/compare-tp4-ep2.txt" 2>&1
$M compare --tp 4 --ep 2 --per-rank --quiet --out-dir "$R" --run-id compare-tp4-ep2-repeat > "$R/compare-tp4-ep2-per-rank.txt" 2>&1
$M compare --scenarios configs/scenarios/nccl-knobs.toml --quiet --out-dir "$R" --run-id nccl-knobs \
  --markdown "$R/nccl-knobs.md" > "$R/nccl-knobs.txt" 2>&1
# issue 4: baseline from the lean scenario, a passing gate, and the regression demonstration
$M baseline update --from "$R/compare-tp4-ep2" --scenario tp4-ep2-lean --out "$R/baseline-tp4-ep2-lean.json" > "$R/gate-baseline.txt" 2>&1
$M gate --baseline "$R/baseline-tp4-ep2-lean.json" --out-dir "$R/gate-pass-runs" --markdown "$R/gate-pass.md" \
  --junit-xml "$R/gate-pass.xml" > "$R/gate-pass.txt" 2>&1; echo "exit code $?" >> "$R/gate-pass.txt"
$M run --tp 4 --ep 2 --stack configs/regressions/lean.toml --quiet --out-dir "$R/runs" --run-id regressed-lean > /dev/null 2>&1
$M gate --baseline "$R/baseline-tp4-ep2-lean.json" --results "$R/runs/regressed-lean" --markdown "$R/gate-regression.md" \
  --junit-xml "$R/gate-regression.xml" > "$R/gate-regression.txt" 2>&1; echo "exit code $?" >> "$R/gate-regression.txt"
# issue 5: failure, kill, hang and interrupt on GPUs
F="$R/failures.txt"; : > "$F"
leftovers() { echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$F"; }
for fault in "1:moe_ep/pynccl:raise" "2:tp/custom_allreduce:kill"; do
  echo "== MEMPROBE_TEST_FAULT=$fault" >> "$F"
  MEMPROBE_TEST_FAULT=$fault $M run --tp 4 --ep 2 --stack full --quiet --out-dir "$R/failures" >> "$F" 2>&1; echo "exit code $?" >> "$F"; leftovers
done
echo "== hang at moe_tp/pynccl, --timeout 45" >> "$F"
s=$(date +%s); MEMPROBE_TEST_FAULT=0:moe_tp/pynccl:hang $M run --tp 4 --ep 2 --stack full --quiet --timeout 45 --out-dir "$R/failures" >> "$F" 2>&1
echo "exit code $? after $(( $(date +%s) - s )) s" >> "$F"; leftovers
echo "== SIGINT while rank 0 hangs at moe_ep/groups_created" >> "$F"
# A background job of a non-interactive shell ignores SIGINT; restore the default before exec.
MEMPROBE_TEST_FAULT=0:moe_ep/groups_created:hang python3 -c 'import os,signal,sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
  python3 -m memprobe run --tp 4 --ep 2 --quiet --out-dir "$R/failures" --run-id interrupted >> "$F" 2>&1 &
p=$!; for i in $(seq 60); do grep -q moe_ep "$R/failures/interrupted/ranks/rank-00001.jsonl" 2>/dev/null && break; sleep 1; done
s=$(date +%s); kill -INT $p; wait $p; echo "exit code $? $(( $(date +%s) - s )) s after SIGINT" >> "$F"; leftovers
find "$R" -name torchrun.log -size +2M -delete

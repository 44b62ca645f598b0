#!/usr/bin/env bash
# Issue 15 on GPUs (run from the repository root): what a newcomer sees on a real node.
#   tools/gpu/issue15.sh OUT_FOLDER        (TP=2 EP=2 by default; TP=4 EP=2 on a 4-GPU node)
# Writes everything under OUT_FOLDER; about 1 minute on 2 GPUs. NCCL_NVLS_ENABLE stays 0 (memprobe's
# sglang preset sets it); nothing resets or reconfigures a GPU.
set -u
OUT=${1:?usage: tools/gpu/issue15.sh OUT_FOLDER}
TP=${TP:-2}
EP=${EP:-2}
mkdir -p "$OUT"
source tools/gpu_lib.sh
export NCCL_NVLS_ENABLE=0
record_environment "$OUT/environment.txt"
M="python3 -m memprobe"

# 1. version and help: plain text, examples that exist, no <bool>
$M --version > "$OUT/version.txt" 2>&1
for c in "" plan run compare report gate "baseline update"; do echo "=== memprobe $c --help"; COLUMNS=100 $M $c --help; done > "$OUT/help.txt" 2>&1

# 2. compare on the GPUs, wide (a file) and at 80 columns; on 2 GPUs with EP=2 full and lean build the
#    same communicators (moe_ep = tp, moe_tp width 1): the note must say so and only 2 scenarios run
timed "$OUT/compare.txt" 240 $M compare --tp "$TP" --ep "$EP" --out-dir "$OUT/runs" --run-id compare --quiet \
    --csv "$OUT/compare.csv" --markdown "$OUT/compare.md" --plot "$OUT/compare.png"
COLUMNS=80 $M report "$OUT/runs/compare" > "$OUT/compare-80.txt" 2>&1
COLUMNS=100 $M report "$OUT/runs/compare" > "$OUT/compare-100.txt" 2>&1

# 3. one run with the full stack: skipped steps (width-1 groups, aliases) must show no bytes
timed "$OUT/run-full.txt" 120 $M run --tp "$TP" --ep "$EP" --stack full --out-dir "$OUT/runs" --run-id run-full --quiet

# 4. the gate against a baseline made from the comparison (must pass: same machine, same numbers)
$M baseline update --from "$OUT/runs/compare" --out "$OUT/baseline.json" > "$OUT/gate.txt" 2>&1
$M gate --baseline "$OUT/baseline.json" --results "$OUT/runs/compare" --markdown "$OUT/gate.md" >> "$OUT/gate.txt" 2>&1
echo "exit code $?" >> "$OUT/gate.txt"

# 5. line widths: nothing over 80 / 100 columns in the narrow renderings
python3 - "$OUT" > "$OUT/widths.txt" <<'PY'
import sys, pathlib
out = pathlib.Path(sys.argv[1])
for name, limit in (("compare-80.txt", 80), ("compare-100.txt", 100)):
    lines = (out / name).read_text().splitlines()
    print(name, "longest line", max(map(len, lines)), "limit", limit)
PY
nvidia-smi --query-compute-apps=pid,used_memory --format=csv >> "$OUT/environment.txt" 2>&1

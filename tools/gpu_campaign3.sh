#!/usr/bin/env bash
# Issue 8 on a 4-GPU machine: real SGLang 0.5.23 (offline sources, tools/sglang_offline/) against the
# reference engine.  Carry `.sglang` (see tools/sglang_offline/NOTES.md), then from the repo root:
#   bash tools/gpu_campaign3.sh results/<name>
# Writes the environment, a JIT warm-up run, `run --engine sglang` for tp4 and tp4/ep2 lean/full, and
# `compare --tp 4 --ep 2 --engine memprobe,sglang` (text with the fidelity report, CSV, JSON, Markdown).
set -u
R=${1:?usage: gpu_campaign3.sh RESULTS_FOLDER}
mkdir -p "$R/runs"
export PYTHONUNBUFFERED=1 COLUMNS=160
T=/tmp/sgl-site
bash tools/sglang_offline/install.sh python3 "$T" > "$R/sglang-install.txt" 2>&1
export PYTHONPATH=$T
M="python3 -m memprobe"
. "$(dirname "$0")/gpu_lib.sh"
record_environment "$R/environment.txt"
python3 -c "import sglang;print('sglang',sglang.__version__,sglang.__file__)" >> "$R/environment.txt" 2>&1
echo "sgl_kernel: stand-in from tools/sglang_offline/sgl_kernel (raises if called)" >> "$R/environment.txt"
# SGLang JIT-compiles custom all-reduce v2 on first use (cached afterwards under its JIT cache folder);
# this first run pays for the compile so the measured runs below do not.
timed "$R/runs/sglang-jit-warmup.txt" 300 $M run --tp 4 --ep 2 --stack full --engine sglang --quiet \
  --out-dir "$R/runs" --run-id sglang-jit-warmup
timed "$R/runs/sglang-tp4.txt" 120 $M run --tp 4 --engine sglang --quiet --out-dir "$R/runs" --run-id sglang-tp4
for stack in lean full; do
  timed "$R/runs/sglang-tp4-ep2-$stack.txt" 120 $M run --tp 4 --ep 2 --stack $stack --engine sglang --quiet \
    --out-dir "$R/runs" --run-id sglang-tp4-ep2-$stack
done
C=compare-tp4-ep2-engines
timed "$R/$C.txt" 240 $M compare --tp 4 --ep 2 --engine memprobe,sglang --quiet --out-dir "$R" --run-id $C \
  --csv "$R/$C.csv" --summary-csv "$R/$C-summary.csv" --json "$R/$C.json" --markdown "$R/$C.md"
echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$R/$C.txt"
find "$R" -name torchrun.log -size +2M -delete

#!/usr/bin/env bash
# Issue 8, second pass on a 4-GPU machine, after the reference engine's pynccl warm-up tensor moved onto
# the warm-up stream (as SGLang 0.5.23 allocates it): `run --engine sglang` for tp4 and tp4/ep2 lean/full,
# the fidelity comparison, then the reference engine alone (headline comparison, one run, `--warmup sweep`,
# the v1 custom all-reduce layout).  Carry `.sglang` (tools/sglang_offline/NOTES.md), then
#   [TP=4 EP=2] bash tools/gpu_campaign4.sh results/<name>
set -u
TP=${TP:-4} EP=${EP:-2}
R=${1:?usage: gpu_campaign4.sh RESULTS_FOLDER}
mkdir -p "$R/runs"
export PYTHONUNBUFFERED=1 COLUMNS=160
M="python3 -m memprobe"
. "$(dirname "$0")/gpu_lib.sh"
T=/tmp/sgl-site
bash tools/sglang_offline/install.sh python3 "$T" > "$R/sglang-install.txt" 2>&1
record_environment "$R/environment.txt"
PYTHONPATH=$T python3 -c "import sglang;print('sglang',sglang.__version__,sglang.__file__)" >> "$R/environment.txt" 2>&1
echo "sgl_kernel: stand-in from tools/sglang_offline/sgl_kernel (raises if called)" >> "$R/environment.txt"
# SGLang first. The first SGLang run JIT-compiles custom all-reduce v2 (cached afterwards); the compile
# takes time, not GPU memory (pass 1 measured the same bytes with and without it).
for layout in "tp$TP-ep$EP-full:--ep $EP --stack full" "tp$TP-ep$EP-lean:--ep $EP --stack lean" "tp$TP:"; do
  name=${layout%%:*}
  PYTHONPATH=$T timed "$R/runs/sglang-$name.txt" 150 $M run --tp $TP ${layout#*:} --engine sglang --quiet \
    --out-dir "$R/runs" --run-id sglang-$name
done
C=compare-tp$TP-ep$EP-engines
PYTHONPATH=$T timed "$R/$C.txt" 200 $M compare --tp $TP --ep $EP --engine memprobe,sglang --quiet --out-dir "$R" --run-id $C \
  --csv "$R/$C.csv" --summary-csv "$R/$C-summary.csv" --json "$R/$C.json" --markdown "$R/$C.md"
echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$R/$C.txt"
# The reference engine alone, without SGLang on the path, as a user without SGLang runs it.
C=compare-tp$TP-ep$EP
timed "$R/$C.txt" 90 $M compare --tp $TP --ep $EP --quiet --out-dir "$R" --run-id $C \
  --csv "$R/$C.csv" --summary-csv "$R/$C-summary.csv" --json "$R/$C.json" --markdown "$R/$C.md"
timed "$R/$C-per-rank.txt" 30 $M report "$R/$C" --per-rank
timed "$R/runs/tp$TP-ep$EP-full.txt" 60 $M run --tp $TP --ep $EP --stack full --quiet --out-dir "$R/runs" --run-id tp$TP-ep$EP-full
timed "$R/runs/tp$TP-ep$EP-full-sweep.txt" 90 $M run --tp $TP --ep $EP --stack full --warmup sweep --quiet --out-dir "$R/runs" \
  --run-id tp$TP-ep$EP-full-sweep
timed "$R/runs/tp$TP-ep$EP-full-v1.txt" 60 $M run --tp $TP --ep $EP --stack full:v1 --quiet --out-dir "$R/runs" --run-id tp$TP-ep$EP-full-v1
echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$R/environment.txt"
find "$R" -name torchrun.log -size +2M -delete

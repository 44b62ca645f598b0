#!/usr/bin/env bash
# Regenerate the committed GPU evidence on the GPUs this machine has (1, 2, 4 or 8; the largest set that fits).
#   bash tools/gpu/regenerate.sh OUT_FOLDER      (DRY_RUN=1 prints the commands; GPUS=N uses the first N GPUs)
# 1 GPU:  the estimate's calibration, and run / compare / baseline update / gate of --tp 1 (results/h200x1-*)
# 2 GPUs: compare --tp 2 --ep 2 with the split, timings, exports and a plot; a baseline and the gate measuring again;
#         one full-stack run with NCCL's account (results/h200x2-*)
# 4 GPUs: the headline (run and compare --tp 4 --ep 2 with every export, --per-rank, the plot), the NCCL settings,
#         NCCL's account under each setting, the gate baseline and the gate (results/h200x4-*)
# 8 GPUs: the 4-GPU set, then tools/gpu/estimate_against_gpus.sh (compare --tp 8 --ep 4 and the estimate's check)
# Real SGLang releases (--engine sglang) need the offline sites of tools/sglang_offline/; see docs/development.md.
set -u
O=${1:?usage: regenerate.sh OUT_FOLDER}
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 COLUMNS=160 NCCL_NVLS_ENABLE=0
R="$O/runs"
here=$(dirname "$0")
m() {  # m LOG ARGS...: one memprobe command, its output in LOG, its exit code in commands.txt
  local log=$1; shift
  echo "\$ memprobe $*" >> "$O/commands.txt"
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "memprobe $*"; return 0; fi
  $PY -m memprobe "$@" > "$O/$log" 2>&1; echo "exit $?" >> "$O/commands.txt"
}
if [ "$GPUS" -lt 1 ]; then echo "regenerate.sh: no NVIDIA GPU visible" >&2; exit 2; fi
mkdir -p "$R"
if [ "${DRY_RUN:-0}" != 1 ]; then . "$here/lib.sh"; record_environment "$O/environment.txt"; fi

# 1 GPU
[ "${DRY_RUN:-0}" = 1 ] && echo "bash $here/calibrate.sh $O/calibration 18" || bash "$here/calibrate.sh" "$O/calibration" 18
m run-tp1.txt run --tp 1 --quiet --out-dir "$R" --run-id run-tp1
m compare-tp1.txt compare --tp 1 --ep 1 --quiet --out-dir "$R" --run-id compare-tp1
m baseline-tp1.txt baseline update --from "$R/run-tp1" --out "$O/baseline-tp1.json"
m gate-tp1.txt gate --baseline "$O/baseline-tp1.json" --out-dir "$R/gate-tp1"

# 2 GPUs
if [ "$GPUS" -ge 2 ] && [ "$GPUS" -lt 4 ]; then
  m compare-tp2-ep2.txt compare --tp 2 --ep 2 --split --timings --quiet --out-dir "$R" --run-id compare-tp2-ep2 \
    --plot "$O/compare-tp2-ep2.png" --summary-csv "$O/compare-tp2-ep2-summary.csv" --markdown "$O/compare-tp2-ep2.md"
  m baseline-tp2.txt baseline update --from "$R/compare-tp2-ep2" --out "$O/baseline-tp2-ep2.json"
  m gate-tp2.txt gate --baseline "$O/baseline-tp2-ep2.json" --out-dir "$R/gate-tp2" --markdown "$O/gate-tp2.md"
  m run-nccl.txt run --tp 2 --ep 2 --stack full --nccl-log --split --quiet --out-dir "$R" --run-id nccl-full
fi

# 4 GPUs (and 8: the headline stays --tp 4 --ep 2 on the first four)
if [ "$GPUS" -ge 4 ]; then
  [ "$GPUS" -ge 8 ] && export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0,1,2,3}
  for stack in full lean; do
    m run-tp4-ep2-$stack.txt run --tp 4 --ep 2 --stack $stack --quiet --out-dir "$R" --run-id tp4-ep2-$stack
  done
  m compare-tp4-ep2.txt compare --tp 4 --ep 2 --quiet --out-dir "$R" --run-id compare-tp4-ep2 \
    --summary-csv "$O/compare-tp4-ep2-summary.csv" --markdown "$O/compare-tp4-ep2.md" --plot "$O/compare-tp4-ep2.png"
  m compare-tp4-ep2-per-rank.txt report "$R/compare-tp4-ep2" --per-rank --split
  m nccl-knobs.txt compare --scenarios configs/scenarios/nccl-knobs.toml --quiet --out-dir "$R" --run-id nccl-knobs \
    --markdown "$O/nccl-knobs.md"
  for setting in "" NCCL_CUMEM_ENABLE=1 NCCL_BUFFSIZE=1048576 NCCL_MAX_CTAS=4; do
    name=trace${setting:+-${setting%%=*}}
    m report-$name.txt run --tp 4 --ep 2 --stack full --nccl-log --split --per-rank --quiet --out-dir "$R" \
      --run-id "$name" ${setting:+--env "$setting"}
  done
  m baseline-tp4.txt baseline update --from "$R/compare-tp4-ep2" --scenario tp4-ep2-lean --out "$O/h200x4-tp4-ep2-lean.json"
  m gate-tp4.txt gate --baseline "$O/h200x4-tp4-ep2-lean.json" --out-dir "$R/gate-tp4" --markdown "$O/gate-tp4.md" \
    --junit-xml "$O/gate-tp4.xml"
  [ "$GPUS" -ge 8 ] && unset CUDA_VISIBLE_DEVICES
fi

# 8 GPUs: the estimate's own check on the node it predicts
if [ "$GPUS" -ge 8 ]; then
  bash "$here/estimate_against_gpus.sh" "$O/estimate-against-gpus"
fi
[ "${DRY_RUN:-0}" = 1 ] || echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$O/environment.txt"

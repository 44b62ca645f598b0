#!/usr/bin/env bash
# The estimate against a real multi-GPU node: measure what `memprobe estimate` predicts, then check it.
#   bash tools/gpu/estimate_against_gpus.sh OUT_FOLDER     (carry .sglang for the real releases, if it fits)
# On 8 GPUs: compare --tp 8 --ep 4 (full, lean; full:v1, lean:v1), the real SGLang 0.5.10.post1 and 0.5.11 when
# their sites install, the full stack with --nccl-log; on 4 GPUs the same at --tp 4 --ep 2; then, on every
# count, `memprobe estimate --check` over all of it and the estimate of the same layouts beside it.
# DRY_RUN=1 prints the commands instead of running them (any machine, no GPU).
set -u
O=${1:?usage: estimate_against_gpus.sh OUT_FOLDER}
PY=${PY:-python3}
M="$PY -m memprobe"
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [ "$GPUS" -ge 8 ]; then TP=8; EP=4; elif [ "$GPUS" -ge 4 ]; then TP=4; EP=2; else
  echo "estimate_against_gpus.sh: needs 4 or 8 GPUs, this machine has $GPUS" >&2; exit 2; fi
export PYTHONUNBUFFERED=1 COLUMNS=220 NCCL_NVLS_ENABLE=0
R="$O/runs"
run() { echo "\$ $*" >> "$O/commands.txt"; if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; return 0; fi
        "$@" > "$O/$LOG" 2>&1; echo "exit $?" >> "$O/commands.txt"; }
mkdir -p "$R"
if [ "${DRY_RUN:-0}" != 1 ]; then . "$(dirname "$0")/lib.sh"; record_environment "$O/environment.txt"; fi
LOG=compare.txt run $M compare --tp $TP --ep $EP --stacks full,lean,full:v1,lean:v1 --per-rank --quiet --out-dir "$R" \
  --run-id compare-tp$TP-ep$EP --json "$O/compare.json" --markdown "$O/compare.md"
LOG=nccl-log.txt run $M run --tp $TP --ep $EP --stack full --nccl-log --quiet --out-dir "$R" --run-id nccl-full
SITES=()
for rel in 0.5.10.post1 0.5.11; do
  if [ "${DRY_RUN:-0}" = 1 ] || timeout 150 bash tools/sglang_offline/install.sh "$PY" "/tmp/sgl-$rel" "$rel" > "$O/install-$rel.txt" 2>&1; then
    SITES+=(--sglang "$rel=/tmp/sgl-$rel"); fi
done
[ ${#SITES[@]} -gt 0 ] && LOG=sglang.txt run $M compare --tp $TP --ep $EP --stacks full:v1,lean:v1 "${SITES[@]}" --quiet \
  --out-dir "$R" --run-id sglang-tp$TP-ep$EP
LOG=estimate.txt run $M estimate --tp $TP --ep $EP --stacks full,lean,full:v1,lean:v1 --per-rank --json "$O/estimate.json"
LOG=check.txt run $M estimate --check "$R" --per-rank
[ "${DRY_RUN:-0}" = 1 ] || (cd "$(dirname "$O")" && tar czf "$(basename "$O").tgz" "$(basename "$O")")

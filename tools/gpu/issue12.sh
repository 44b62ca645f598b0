#!/usr/bin/env bash
# Issue 12 on GPUs: real SGLang 0.5.10.post1 (before PR #22515), 0.5.11 and 0.5.23 (after) side by side, each
# through its own parallel-state API, next to the reference engine's full and lean; a baseline recorded with real
# 0.5.11 and the gate re-measuring it with 0.5.11 and with 0.5.10.post1 (about 4-5 minutes in all).
#   bash tools/gpu/issue12.sh OUT_FOLDER      (carry .sglang; TP=2 EP=2 by default, TP=4 EP=2 when 4 GPUs are visible)
# With TP=2 EP=2 moe_ep is the tp group (alias) and moe_tp has width 1: 0.5.10.post1 then builds no extra
# communicator, so the releases cannot differ there (what it shows: each API runs, run.json's sglang record, the
# fidelity of the groups that exist). TP=4 EP=2 gives moe_ep/moe_tp of width 2: the PR's saving.
# Local pipeline check: DEVICE=cpu SITE_PREFIX=/tmp/sgl- (sites already installed; install.sh needs cp312).
set -u
O=${1:?usage: issue12.sh OUT_FOLDER}
DEVICE=${DEVICE:-cuda}
SITE_PREFIX=${SITE_PREFIX:-/tmp/sgl-}
PY=${PY:-python3}
if [ -z "${TP:-}" ]; then
  GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
  if [ "$GPUS" -ge 4 ]; then TP=4; else TP=2; fi
fi
EP=${EP:-2}
RELEASES="0.5.10.post1 0.5.11 0.5.23"
mkdir -p "$O/runs" "$O/install"
export PYTHONUNBUFFERED=1 COLUMNS=220
export NCCL_NVLS_ENABLE=0
M="$PY -m memprobe"
D=(--device "$DEVICE")
. "$(dirname "$0")/../gpu_lib.sh"
[ "$DEVICE" = cuda ] && record_environment "$O/environment.txt"
echo "TP=$TP EP=$EP DEVICE=$DEVICE" >> "$O/environment.txt"

# 1. one site folder per release, installed side by side from the carried .sglang/ (in parallel)
for rel in $RELEASES; do
  if [ ! -f "$SITE_PREFIX$rel/SGLANG_OFFLINE_RELEASE" ]; then
    timeout 150 bash tools/sglang_offline/install.sh "$PY" "$SITE_PREFIX$rel" "$rel" > "$O/install/$rel.txt" 2>&1 &
  fi
done
wait
# what each release's custom all-reduce will be on this machine (v1 needs the real sgl_kernel's sm90 ops)
for rel in $RELEASES; do
  PYTHONPATH="$SITE_PREFIX$rel${PYTHONPATH:+:$PYTHONPATH}" timeout 60 "$PY" -c "
import sglang, sglang.srt.distributed.device_communicators.custom_all_reduce as car
try:
    from sglang.srt.distributed.device_communicators import custom_all_reduce_ops as ops
    available = ops.IS_CUSTOM_AR_AVAILABLE
except Exception as error:
    available = f'no custom_all_reduce_ops ({error})'
print('$rel', sglang.__version__, 'IS_CUSTOM_AR_AVAILABLE', available)" >> "$O/install/custom_allreduce.txt" 2>&1
done

# 2. one release alone, SGLang's own flags (stack installed): 0.5.11, the baseline of step 4
#    (RUNS="0.5.10.post1 0.5.11 0.5.23" for all three, about 50 s each on GPUs; the compare has them all anyway)
for rel in ${RUNS:-0.5.11}; do
  timed "$O/runs/run-$rel.txt" 120 $M run "${D[@]}" --tp "$TP" --ep "$EP" --engine sglang --sglang "$SITE_PREFIX$rel" \
    --stack installed --quiet --out-dir "$O/runs" --run-id "sglang-$rel"
done

# 3. one table: tp baseline, reference full and lean, and the three real releases; lean saves between real releases
timed "$O/compare.txt" 200 $M compare "${D[@]}" --tp "$TP" --ep "$EP" \
  --sglang "0.5.10.post1=${SITE_PREFIX}0.5.10.post1" --sglang "0.5.11=${SITE_PREFIX}0.5.11" \
  --sglang "0.5.23=${SITE_PREFIX}0.5.23" --out-dir "$O/runs" --run-id compare \
  --json "$O/compare.json" --markdown "$O/compare.md"

# 4. the gate as SGLang's CI would use it: a baseline from real 0.5.11, re-measured with 0.5.11 (expect exit 0)
#    and with 0.5.10.post1 (expect exit 1 with TP=4 EP=2: the MoE communicators come back; 0 with TP=2 EP=2)
timed "$O/baseline.txt" 60 $M baseline update --from "$O/runs/sglang-0.5.11" --out "$O/baseline-0.5.11.json"
for rel in 0.5.11 0.5.10.post1; do
  timed "$O/gate-$rel.txt" 120 $M gate "${D[@]}" --baseline "$O/baseline-0.5.11.json" --sglang "$SITE_PREFIX$rel" \
    --out-dir "$O/runs/gate-$rel" --json "$O/gate-$rel.json"
done
grep -H "exit code" "$O"/runs/run-*.txt "$O"/compare.txt "$O"/baseline.txt "$O"/gate-*.txt > "$O/exit-codes.txt"
[ "$DEVICE" = cuda ] && echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$O/environment.txt"
true

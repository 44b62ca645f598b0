#!/usr/bin/env bash
# Issue 12, item 5 on GPUs: the reference engine against the three real releases on one machine, with both custom
# all-reduce layouts of the reference (full: v2 like 0.5.23; full:v1 like 0.5.10.post1 and 0.5.11), so that every
# release meets the reference stack that builds what it builds.
#   bash tools/gpu/issue12_fidelity.sh OUT_FOLDER      (carry .sglang; TP=2 EP=2 by default)
set -u
O=${1:?usage: issue12_fidelity.sh OUT_FOLDER}
TP=${TP:-2}
EP=${EP:-2}
mkdir -p "$O/install"
export PYTHONUNBUFFERED=1 COLUMNS=220 NCCL_NVLS_ENABLE=0
. "$(dirname "$0")/../gpu_lib.sh"
record_environment "$O/environment.txt"
for rel in 0.5.10.post1 0.5.11 0.5.23; do
  timeout 150 bash tools/sglang_offline/install.sh python3 "/tmp/sgl-$rel" "$rel" > "$O/install/$rel.txt" 2>&1 &
done
wait
timed "$O/compare.txt" 300 python3 -m memprobe compare --tp "$TP" --ep "$EP" --stacks full,full:v1 \
  --sglang "0.5.10.post1=/tmp/sgl-0.5.10.post1" --sglang "0.5.11=/tmp/sgl-0.5.11" --sglang "0.5.23=/tmp/sgl-0.5.23" \
  --out-dir "$O/runs" --run-id compare --json "$O/compare.json"
echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$O/environment.txt"

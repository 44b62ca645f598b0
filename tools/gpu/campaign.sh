#!/usr/bin/env bash
# The GPU campaign of issues 13-16 in one device call: each issue's script into its own folder, each folder
# packed as one .tgz in OUT (the device returns at most 8 files). Issue 12 (real SGLang releases) has its own.
#   bash tools/gpu/campaign.sh OUT
set -u
OUT=${1:?usage: tools/gpu/campaign.sh OUT}
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD
mkdir -p "$OUT/work"
start=$(date +%s)
for issue in 13_16 14 15; do
  s=$(date +%s)
  BENCH=0 timeout 330 bash tools/gpu/issue$issue.sh "$OUT/work/issue$issue" > "$OUT/work/issue$issue.log" 2>&1
  echo "issue$issue: exit $? after $(( $(date +%s) - s )) s" >> "$OUT/campaign.txt"
done
echo "total $(( $(date +%s) - start )) s" >> "$OUT/campaign.txt"
find "$OUT/work" -name torchrun.log -size +2M -delete
for issue in 13_16 14 15; do (cd "$OUT/work" && tar czf "$OUT/issue$issue.tgz" "issue$issue" "issue$issue.log"); done
rm -rf "$OUT/work"

#!/usr/bin/env bash
# What one GPU can show: the estimate's calibration, and run / compare / gate of one scenario reading the same bytes.
# Usage: bash tools/gpu/one_gpu.sh OUT_DIR   (on a machine with at least one NVIDIA GPU; NCCL_NVLS_ENABLE stays 0)
set -uo pipefail
out=${1:?usage: one_gpu.sh OUT_DIR}
mkdir -p "$out/runs"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
bash tools/gpu/calibrate.sh "$out/calibration" 18
m() { echo "\$ memprobe $*" >> "$out/commands.txt"; python3 -m memprobe "$@"; echo "exit $?" >> "$out/commands.txt"; }
m run --tp 1 --quiet --out-dir "$out/runs" --run-id run-tp1 > "$out/run-tp1.txt" 2>&1
m compare --tp 1 --ep 1 --quiet --out-dir "$out/runs" --run-id compare-tp1 > "$out/compare-tp1.txt" 2>&1
m baseline update --from "$out/runs/run-tp1" --out "$out/baseline-tp1.json" > "$out/baseline-tp1.txt" 2>&1
m gate --baseline "$out/baseline-tp1.json" --out-dir "$out/runs/gate" > "$out/gate-tp1.txt" 2>&1
ls /tmp | grep -c torchelastic_ > "$out/tmp-torchelastic-left.txt" || true

#!/usr/bin/env bash
# Calibrate `memprobe estimate` on one GPU of this machine and record the environment beside it.
# Usage: bash tools/gpu/calibrate.sh OUT_DIR [NVLINKS]   (NVLINKS: per GPU of the target node; 18 on HGX H200)
set -euo pipefail
out=${1:?usage: calibrate.sh OUT_DIR [NVLINKS]}
links=${2:-18}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
{ date -u; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvidia-smi topo -m;
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"; } \
  > "$out/environment.txt" 2>&1
start=$(date +%s.%N)
python3 -m memprobe calibrate --out "$out/calibration.json" --nvlinks "$links" 2>&1 | tee "$out/calibrate.txt"
python3 -c "import sys, time; print(f\"wall time {time.time() - float(sys.argv[1]):.1f} s\")" "$start" >> "$out/calibrate.txt"
echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$out/environment.txt"

#!/usr/bin/env bash
# Exploration on a 4-GPU machine (issues 14 and 16), with the code as it stood before the restructure:
# NCCL's own log of every communicator (ALL subsystems once, ALLOC+INIT for the knob variants), a plain run
# for the cost of tracing, NCCL's exported symbols and log format strings, and where a side-by-side
# compare spends its time (import torch and CUDA-context start alone and 12 at once).
#   bash tools/gpu_explore.sh OUT_FOLDER
set -u
O=${1:?usage: gpu_explore.sh OUT_FOLDER}
mkdir -p "$O/runs"
export PYTHONUNBUFFERED=1 COLUMNS=160
M="python3 -m memprobe"
. "$(dirname "$0")/gpu_lib.sh"
record_environment "$O/environment.txt"
LIB=$(python3 -c "import torch,re;torch.cuda.nccl.version();print([l.split()[-1] for l in open('/proc/self/maps') if 'libnccl' in l][0])")
echo "nccl library: $LIB" >> "$O/environment.txt"
nm -D --defined-only "$LIB" | awk '{print $3}' | grep -i '^p\?nccl' | sort -u > "$O/nccl-symbols.txt"
strings -n 6 "$LIB" | grep -E '%|Alloc|alloc|bytes|Size' | sort -u > "$O/nccl-strings.txt"
run() {  # run NAME SECONDS ARGS...
  local name=$1 limit=$2; shift 2
  mkdir -p "$O/runs/$name-nccl"
  timed "$O/runs/$name.txt" "$limit" $M run --tp 4 --ep 2 --stack full --quiet --out-dir "$O/runs" --run-id "$name" "$@"
}
run plain 90
run trace-all 120 --env NCCL_DEBUG=INFO --env NCCL_DEBUG_SUBSYS=ALL --env NCCL_DEBUG_FILE="$O/runs/trace-all-nccl/%h.%p.log"
run trace 90 --env NCCL_DEBUG=INFO --env NCCL_DEBUG_SUBSYS=ALLOC,INIT --env NCCL_DEBUG_FILE="$O/runs/trace-nccl/%h.%p.log"
run trace-cumem1 90 --env NCCL_CUMEM_ENABLE=1 --env NCCL_DEBUG=INFO --env NCCL_DEBUG_SUBSYS=ALLOC,INIT --env NCCL_DEBUG_FILE="$O/runs/trace-cumem1-nccl/%h.%p.log"
run trace-buffsize 90 --env NCCL_BUFFSIZE=1048576 --env NCCL_DEBUG=INFO --env NCCL_DEBUG_SUBSYS=ALLOC,INIT --env NCCL_DEBUG_FILE="$O/runs/trace-buffsize-nccl/%h.%p.log"
run trace-maxctas 90 --env NCCL_MAX_CTAS=4 --env NCCL_DEBUG=INFO --env NCCL_DEBUG_SUBSYS=ALLOC,INIT --env NCCL_DEBUG_FILE="$O/runs/trace-maxctas-nccl/%h.%p.log"
# where the time goes
{
  for n in 1 4 12; do
    s=$(date +%s%N); for i in $(seq $n); do python3 -c "import torch" & done; wait
    echo "import torch x$n concurrently: $(( ($(date +%s%N) - s) / 1000000 )) ms"
    s=$(date +%s%N); for i in $(seq $n); do CUDA_VISIBLE_DEVICES=$(( (i-1) % 4 )) python3 -c "import torch;torch.zeros(1,device='cuda');torch.cuda.synchronize()" & done; wait
    echo "import torch + CUDA context x$n concurrently (round-robin over 4 GPUs): $(( ($(date +%s%N) - s) / 1000000 )) ms"
  done
} > "$O/startup-timing.txt" 2>&1
timed "$O/compare-side-by-side.txt" 120 $M compare --tp 4 --ep 2 --quiet --out-dir "$O" --run-id compare-side
timed "$O/compare-jobs1.txt" 120 $M compare --tp 4 --ep 2 --quiet --jobs 1 --out-dir "$O" --run-id compare-jobs1
echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$O/environment.txt"

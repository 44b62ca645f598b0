#!/usr/bin/env bash
# Issues 13 and 16 on GPUs: two torchrun nodes on one host (CUDA_VISIBLE_DEVICES split, loopback rendezvous)
# for --stack full and lean, readings beside the single-node run's; then the benchmark (bench/run_bench.py):
# one run, compare side by side and --jobs 1 (byte-identical readings, per-phase timings), three reference
# launches, both ratios. TP=2 always (2 nodes x 1 GPU), TP=4 when 4 GPUs are visible (2 nodes x 2 GPUs).
#   bash tools/gpu/issue13_16.sh OUT_FOLDER          (EP=2 by default; DEVICE=cpu tries the script without GPUs)
# On 2 GPUs, --tp 2 --ep 2 makes moe_ep the tp group and moe_tp width 1: it shows the lifecycle and the timings,
# not MoE-specific memory. Runtime: about 1.5 min on 2 GPUs, about 4 min on 4.
set -u
O=${1:?usage: tools/gpu/issue13_16.sh OUT_FOLDER}
EP=${EP:-2}
DEVICE=${DEVICE:-cuda}
mkdir -p "$O" && O=$(cd "$O" && pwd)
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 COLUMNS=160 NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD
M="python3 -m memprobe"
. tools/gpu_lib.sh
if [ "$DEVICE" = cuda ]; then record_environment "$O/environment.txt"; GPUS=$(nvidia-smi -L | wc -l); else GPUS=${GPUS:-2}; fi
LEFT_BEFORE=$(ls -d /tmp/torchelastic_* 2>/dev/null | wc -l)

two_nodes() {  # two_nodes TP STACK FOLDER: node 0 on the first TP/2 GPUs, node 1 on the others
  local tp=$1 stack=$2 d=$3 half=$(( $1 / 2 )) port=$(( 21000 + RANDOM % 8000 )) node gpus
  for node in 0 1; do
    gpus=$(seq -s, $(( node * half )) $(( node * half + half - 1 )))
    CUDA_VISIBLE_DEVICES=$gpus timeout 150 $M run --device "$DEVICE" --tp "$tp" --ep "$EP" --stack "$stack" --quiet --timings \
      --nnodes 2 --node-rank $node --master-port $port --out-dir "$d/node$node" --run-id "two-$stack" \
      > "$d/node$node-$stack.txt" 2>&1 &
    eval "pid$node=\$!"
  done
  wait $pid0; echo "node 0 ($stack) exit code $?" >> "$d/summary.txt"
  wait $pid1; echo "node 1 ($stack) exit code $?" >> "$d/summary.txt"
}

beside() {  # beside GATHERED SINGLE: every (rank, group, step) reading of a two-node run beside the single-node run's
  python3 - "$1" "$2" <<'PY'
import sys
from memprobe.model.records import load_run
two, one = (load_run(p) for p in sys.argv[1:])
key = lambda r: (r.rank, r.group, r.step)
a = {key(r): r.primary_bytes for r in two.readings}; b = {key(r): r.primary_bytes for r in one.readings}
diffs = [abs(a[k] - b[k]) for k in a if k in b and a[k] is not None and b[k] is not None]
print(f"{sys.argv[1]} vs {sys.argv[2]}: {len(a)} readings (single {len(b)}), ranks {two.ranks}, "
      f"largest difference {max(diffs) / 2**20:.2f} MiB, identical keys: {set(a) == set(b)}")
PY
}

campaign() {  # campaign TP
  local tp=$1 d=$O/tp$1
  mkdir -p "$d"
  for stack in full lean; do two_nodes "$tp" "$stack" "$d"; done
  if [ "$DEVICE" = cuda ]; then
    timed "$d/bench.txt" 400 python3 bench/run_bench.py --tp "$tp" --ep "$EP" --repeats 0 --out "$d/bench"
    single=$d/bench/memprobe/compare-jobs1
  else
    timed "$d/single.txt" 200 $M compare --device cpu --tp "$tp" --ep "$EP" --jobs 1 --quiet --timings --out-dir "$d" --run-id single
    single=$d/single
  fi
  for stack in full lean; do
    beside "$d/node0/two-$stack" "$single/tp$tp-ep$EP-$stack" >> "$d/summary.txt" 2>&1
  done
  $M report "$single" --timings > "$d/timings-jobs1.txt" 2>&1
  [ -d "$d/bench/memprobe/compare" ] && $M report "$d/bench/memprobe/compare" --timings > "$d/timings-side-by-side.txt" 2>&1
  echo "death-signal lines in torchrun.log: $(cat "$d"/node*/*/torchrun.log | grep -c 'death signal')" >> "$d/summary.txt"
}

campaign 2
if [ "$GPUS" -ge 4 ]; then campaign 4; fi
echo "torchelastic folders in /tmp: $LEFT_BEFORE before, $(ls -d /tmp/torchelastic_* 2>/dev/null | wc -l) after" >> "$O/summary.txt"
[ "$DEVICE" = cuda ] && echo "GPU processes left: $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)" >> "$O/summary.txt"
cat "$O"/summary.txt "$O"/tp*/summary.txt "$O"/tp*/bench.txt 2>/dev/null

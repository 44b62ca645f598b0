#!/usr/bin/env bash
# On the device: build NCCL 2.30.7 (sm_90 only), preload it (torch's groups and vLLM's PyNccl then both use it), and
# measure vLLM 0.33.0's start-up (the installed code and memprobe's reproduction) on 2 and 4 socket "nodes".
# DRY=1: no build, no preload, --device cpu (tries the set-up here).
set -uo pipefail
repo=$PWD
start=$(date +%s)
out=${OUT:-/tmp/out}; mkdir -p "$out"
res=/tmp/vx/res; mkdir -p "$res" /tmp/vx/site /tmp/vx/glue
elapsed() { echo $(( $(date +%s) - start )); }
device=cuda; extra=""
if [ "${DRY:-0}" != 1 ]; then
  mkdir -p /tmp/nb && tar xJf .carry-nccl/nccl-2.30.7-1.tar.xz -C /tmp/nb
  (cd /tmp/nb/nccl && timeout 420 make -j24 src.build NVCC_GENCODE="-gencode=arch=compute_90,code=sm_90" \
      CUDA_HOME=/usr/local/cuda > "$res/nccl-build.log" 2>&1) || { echo "NCCL build failed after $(elapsed) s"; tail -30 "$res/nccl-build.log"; exit 1; }
  echo "NCCL built in $(elapsed) s"
  lib=/tmp/nb/nccl/build/lib/libnccl.so.2.30.7
  sha256sum "$lib" > "$res/libnccl.sha256"
  nm -D "$lib" | grep -c ncclCommSuspend | sed 's/^/ncclCommSuspend exported: /' | tee -a "$res/libnccl.sha256"
  (xz -T16 -6 -c "$lib" > /tmp/libnccl.xz && split -b 15M /tmp/libnccl.xz "$out/libnccl-2.30.7-sm90.so.xz.part-") &
  extra="LD_PRELOAD=$lib"
  env $extra python3 -c "import torch; print('torch', torch.__version__, 'NCCL', torch.cuda.nccl.version())" | tee "$res/preload-check.txt"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/vx/glue .carry-vglue/*.whl
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$res/gpu.txt"
else
  device=cpu
fi
tar xJf .carry-vllm/vllm.tar.xz -C /tmp/vx/site && touch /tmp/vx/site/vllm/_C_stable_libtorch.py
mkdir -p /tmp/vx/code && cp -r memprobe tools configs pyproject.toml /tmp/vx/code/
(cd /tmp/vx/code && patch -s -p0 < "$repo/.carry-nccl/real-on-cuda.diff") || exit 1
cp "$repo/.carry-nccl/real-on-cuda.diff" "$res/experiment-code.diff"
cd /tmp/vx/code
export PYTHONPATH=/tmp/vx/glue
symm="--env VLLM_ALLREDUCE_USE_SYMM_MEM=0 --timeout 90"
port=29700
one() {  # NODES PREFIX WHAT
  if [ "$(elapsed)" -gt "${BUDGET_S:-500}" ]; then echo "skipped $2 (budget, $(elapsed) s)" | tee -a "$res/summary.txt"; return; fi
  NODES=$1 PREFIX=$2 WHAT=$3 CUMEM=default TIMEOUT=110 PORT_BASE=$port PYTHON=python3 EXTRA="$extra" \
    bash tools/gpu/hostid_nodes.sh "$res" "$device" > /dev/null
  port=$((port + 5))
  tail -1 "$res/summary.txt"
}
ref="compare --engine vllm-ref --stacks vllm,shared-ep $symm"
installed="run --engine vllm --vllm /tmp/vx/site $symm"
one 2 ref-tp2-moe- "$ref --tp 2 --moe"
one 2 installed-tp2-moe- "$installed --tp 2 --moe"
one 4 ref-tp4-moe- "$ref --tp 4 --moe"
one 4 installed-tp4-moe- "$installed --tp 4 --moe"
one 4 ref-tp2-dp2-moe-ep- "$ref --tp 2 --dp 2 --moe --enable-expert-parallel"
one 4 ref-tp4-moe-ep-eplb- "$ref --tp 4 --moe --enable-expert-parallel --enable-eplb"
one 4 installed-tp4-moe-ep-eplb- "$installed --tp 4 --moe --enable-expert-parallel --enable-eplb"
one 4 ref-tp2-pp2-moe- "$ref --tp 2 --pp 2 --moe"
wait
find "$res" -name '*.log' -size +1k -exec gzip -q {} +
(cd /tmp/vx && tar czf "$out/res.tgz" res)
echo "done in $(elapsed) s"; ls -la "$out"

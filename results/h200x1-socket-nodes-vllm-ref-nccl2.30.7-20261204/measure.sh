#!/usr/bin/env bash
# On the device: NCCL 2.30.7 (built there for sm_90 by measure.sh, carried back xz'd), preloaded, so torch's groups
# and memprobe's PyNccl both bind to it; memprobe's reproduction of vLLM 0.33.0 on 2 and 4 socket "nodes".
set -uo pipefail
start=$(date +%s)
res=/tmp/vx/res; mkdir -p "$res" /tmp/nb
cat .carry-nccl/libnccl-2.30.7-sm90.so.xz.part-* | xz -dc > /tmp/nb/libnccl.so.2.30.7 || exit 1
lib=/tmp/nb/libnccl.so.2.30.7
sha256sum "$lib" > "$res/libnccl.sha256"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$res/gpu.txt"
mkdir -p /tmp/vx/code && cp -r memprobe tools configs pyproject.toml /tmp/vx/code/ && cd /tmp/vx/code
LD_PRELOAD=$lib python3 -c "
import torch; from memprobe.measure.cuda_libs import nccl_library as n
print('torch', torch.__version__, 'built with NCCL', torch.cuda.nccl.version(), 'binds to', n().version(), n().path)" | tee "$res/preload-check.txt"
port=29800
one() {
  NODES=$1 PREFIX=$2 WHAT=$3 CUMEM=default TIMEOUT=110 PORT_BASE=$port PYTHON=python3 EXTRA="LD_PRELOAD=$lib" \
    bash tools/gpu/hostid_nodes.sh "$res" cuda > /dev/null
  port=$((port + 5)); tail -1 "$res/summary.txt"
}
ref="compare --engine vllm-ref --stacks vllm,shared-ep --env VLLM_ALLREDUCE_USE_SYMM_MEM=0 --timeout 90"
one 2 tp2-moe- "$ref --tp 2 --moe"
one 4 tp4-moe- "$ref --tp 4 --moe"
one 4 tp4-moe-ep-eplb- "$ref --tp 4 --moe --enable-expert-parallel --enable-eplb"
one 4 tp2-pp2-moe- "$ref --tp 2 --pp 2 --moe"
one 4 tp2-dp2-moe-ep- "$ref --tp 2 --dp 2 --moe --enable-expert-parallel"
find "$res" -name '*.log' -size +1k -exec gzip -q {} +
(cd /tmp/vx && tar czf "$OUT/res.tgz" res)
echo "done in $(( $(date +%s) - start )) s"

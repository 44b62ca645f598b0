#!/usr/bin/env bash
# On the device: the installed vLLM 0.33.0's own start-up on NCCL 2.30.7 (built there for sm_90, stripped of its
# static symbol table to fit the carry limit, preloaded), 2 and 4 socket "nodes".
set -uo pipefail
repo=$PWD; start=$(date +%s)
res=/tmp/vx/res; mkdir -p "$res" /tmp/nb /tmp/vx/site /tmp/vx/glue
xz -dc .carry-run/libnccl-2.30.7-sm90-stripped.so.xz > /tmp/nb/libnccl.so.2.30.7 || exit 1
lib=/tmp/nb/libnccl.so.2.30.7
sha256sum "$lib" > "$res/libnccl.sha256"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$res/gpu.txt"
tar xJf .carry-run/vllm.tar.xz -C /tmp/vx/site || exit 1
tar xJf .carry-run/glue.tar.xz -C /tmp/vx || exit 1  # the wheels unzipped (msgspec, pyzmq, pydantic, pydantic_core, annotated_types, typing_inspection)
python3 -m pip list 2>/dev/null | grep -i "^typing.extensions\|^torch " > "$res/packages.txt"
mkdir -p /tmp/vx/code && cp -r memprobe tools configs pyproject.toml /tmp/vx/code/ && cd /tmp/vx/code
patch -s -p0 < "$repo/.carry-run/real-on-cuda.diff" || exit 1
cp "$repo/.carry-run/real-on-cuda.diff" "$res/experiment-code.diff"; cp "$repo/.carry-run/measure.sh" "$res/"
export PYTHONPATH=/tmp/vx/glue
LD_PRELOAD=$lib python3 -c "
import torch; from memprobe.measure.cuda_libs import nccl_library as n
print('torch', torch.__version__, 'built with NCCL', torch.cuda.nccl.version(), 'binds to', n().version(), n().path)" | tee "$res/preload-check.txt"
port=29900
one() {
  NODES=$1 PREFIX=$2 WHAT=$3 CUMEM=default TIMEOUT=110 PORT_BASE=$port PYTHON=python3 EXTRA="LD_PRELOAD=$lib" \
    bash tools/gpu/hostid_nodes.sh "$res" cuda > /dev/null
  port=$((port + 5)); tail -1 "$res/summary.txt"
}
installed="run --engine vllm --vllm /tmp/vx/site --env VLLM_ALLREDUCE_USE_SYMM_MEM=0 --timeout 90"
one 2 tp2-moe- "$installed --tp 2 --moe"
one 4 tp4-moe- "$installed --tp 4 --moe"
one 4 tp4-moe-ep-eplb- "$installed --tp 4 --moe --enable-expert-parallel --enable-eplb"
one 4 tp2-dp2-moe-ep- "$installed --tp 2 --dp 2 --moe --enable-expert-parallel"
find "$res" -name '*.log' -size +1k -exec gzip -q {} +
find "$res" -name tmp -type d -exec rm -rf {} + 2>/dev/null
(cd /tmp/vx && tar czf "$OUT/res.tgz" res)
echo "done in $(( $(date +%s) - start )) s"

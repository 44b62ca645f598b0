#!/usr/bin/env bash
# Several "nodes" on one GPU: N memprobe processes, one per node, each with its own NCCL_HOSTID, so NCCL takes
# them for N hosts and joins them over its socket transport (NCCL_NET=Socket on the loopback interface, whose
# speed NCCL cannot read: it takes 10 Gb/s, net_socket.cc:104-106). Each process's NVML figures stay its own.
# Usage: bash tools/gpu/hostid_nodes.sh OUT_DIR [DEVICE]   (DEVICE: cuda, or cpu to try the launch without a GPU)
# NODES (default "2 4") and CUMEM (default "0 1") choose the runs; SUBSYS the NCCL_DEBUG_SUBSYS (default
# INIT,GRAPH,NET); EXTRA more VAR=VALUE for every process (e.g. NCCL_ALGO=Ring); LEAN=1 runs `run --tp N` alone;
# WHAT replaces the memprobe command and its layout ("compare --engine vllm-ref --tp 2 --moe"); CUMEM "default"
# leaves NCCL_CUMEM_ENABLE unset (NCCL's default: on). TIMEOUT (default 400) bounds each process, in seconds.
set -uo pipefail
out=$(realpath -m "${1:?usage: hostid_nodes.sh OUT_DIR [DEVICE]}")
device=${2:-cuda}
mkdir -p "$out"
here=$(pwd)
python=${PYTHON:-python3}
port_base=${PORT_BASE:-29611}
subsys=${SUBSYS:-INIT,GRAPH,NET}
for nodes in ${NODES:-2 4}; do
  for cumem in ${CUMEM:-0 1}; do
    name=${PREFIX:-}nodes${nodes}-cumem${cumem}
    port=$((port_base++))
    pids=()
    for ((node = 0; node < nodes; node++)); do
      folder="$out/$name/node$node"
      mkdir -p "$folder/tmp" "$out/$name/nccl-logs"
      what=(compare --tp "$nodes" --ep 2 --stacks full,lean)
      [ "${LEAN:-0}" = 1 ] && what=(run --tp "$nodes")
      [ -n "${WHAT:-}" ] && read -ra what <<< "$WHAT"
      cumem_env=(--env "NCCL_CUMEM_ENABLE=$cumem")
      [ "$cumem" = default ] && cumem_env=()
      command=(-m memprobe "${what[@]}" --device "$device"
               "${cumem_env[@]}" --nnodes "$nodes" --node-rank "$node" --master-addr 127.0.0.1
               --master-port "$port" --allow-busy-gpu --quiet --out-dir "$folder/runs" --run-id "$name")
      echo "cd $folder && NCCL_HOSTID=memprobe-node-$node NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo NCCL_NVLS_ENABLE=0" \
           "NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=$subsys NCCL_DEBUG_FILE=$out/$name/nccl-logs/node$node.%p.log ${EXTRA:-}" \
           "python -m ${command[*]:1}" >> "$out/commands.txt"
      (cd "$folder" && env TMPDIR="$folder/tmp" PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" \
         NCCL_HOSTID="memprobe-node-$node" NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo NCCL_NVLS_ENABLE=0 \
         NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS="$subsys" NCCL_DEBUG_FILE="$out/$name/nccl-logs/node$node.%p.log" ${EXTRA:-} \
         timeout "${TIMEOUT:-400}" "$python" "${command[@]}" > "$folder/stdout.txt" 2> "$folder/stderr.txt"; echo "exit $?" >> "$folder/stderr.txt") &
      pids+=($!)
    done
    start=$(date +%s)
    for pid in "${pids[@]}"; do wait "$pid"; done
    echo "$name: $(( $(date +%s) - start )) s; $(grep -h '^exit' "$out/$name"/node*/stderr.txt | tr '\n' ' ')" >> "$out/summary.txt"
    rmdir "$out/$name"/node*/tmp 2>/dev/null
  done
done
cat "$out/summary.txt"

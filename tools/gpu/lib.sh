# Shared by the GPU scripts of tools/gpu/ (source it): the environment record and a timed command.

record_environment() {  # record_environment FILE: GPUs, driver, topology, versions, NCCL/CUDA variables
  {
    date -u; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    nvidia-smi topo -m
    python3 -c "import torch,platform;print('torch',torch.__version__,'cuda',torch.version.cuda,'nccl',torch.cuda.nccl.version(),'python',platform.python_version())"
    env | grep -E '^(NCCL|TORCH_NCCL|TORCH_SYMM|NVSHMEM|CUDA_)' | sort
  } > "$1" 2>&1
}

timed() {  # timed LOG SECONDS COMMAND...: run, append exit code and wall time to LOG
  local log=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "exit code $? after $(( $(date +%s) - start )) s" >> "$log"
}

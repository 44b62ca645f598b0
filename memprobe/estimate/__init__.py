"""memprobe estimate: per-rank communicator memory from NCCL's rules and a one-GPU calibration (no GPU, no torch)."""

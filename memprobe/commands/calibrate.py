"""``memprobe calibrate``: measure on one GPU the constants ``memprobe estimate`` cannot derive from NCCL's rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from memprobe import api
from memprobe.commands.options import QUIET, VERBOSE, option

Defaults = api.CalibrateOptions


def calibrate(
    out: Path = option(..., "--out", env="CALIBRATE_OUT", help="The calibration file to write (.json)."),
    nvlinks: Optional[int] = option(Defaults.nvlinks, "--nvlinks", env="CALIBRATE_NVLINKS",
                                          help="NVLinks each GPU of the target node has to its NVSwitch (18 on HGX "
                                               "H100/H200). Default: what NVML reports on this GPU; needed where NVML "
                                               "reports none (a one-GPU VM)."),
    gpu_index: int = option(Defaults.gpu_index, "--gpu-index", env="CALIBRATE_GPU_INDEX",
                                  help="Which visible GPU to measure (CUDA order)."),
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> int:
    """Measure one GPU's per-process constants for `memprobe estimate` (under a minute, one GPU).

    For NCCL_CUMEM_ENABLE=0 (SGLang's setting) and =1: the CUDA context, a one-rank NCCL communicator,
    and the once-per-process cost of a process's first multi-rank communicator (two processes on this one
    GPU joined as two nodes). NCCL_NVLS_ENABLE stays 0. Example:

    \b
      memprobe calibrate --out my-h200.json --nvlinks 18
      memprobe estimate --tp 8 --ep 4 --calibration my-h200.json

    Exit codes: 0 written, 2 bad input or no GPU (nothing written), 3 a measuring process failed (nothing written).
    Every command: 70 an unexpected error (one line; its traceback in a temp file), 129/130/143 hung up, interrupted,
    terminated, 141 standard output's reader went away.
    """
    calibration = api.calibrate(out=out, nvlinks=nvlinks, gpu_index=gpu_index)
    _report(calibration, out)
    return 0


def _report(calibration: Any, out: Path) -> None:
    from memprobe.units import mib

    print(f"calibration of {calibration.gpu_model} (driver {calibration.driver}, torch {calibration.torch}, "
          f"NCCL {calibration.nccl}), {calibration.nvlinks_per_gpu} NVLinks per GPU; MiB = 2^20 bytes")
    for point in calibration.points:
        print(f"  NCCL_CUMEM_ENABLE={int(point.cumem)}: CUDA context {mib(point.cuda_context_bytes)} MiB, first multi-rank "
              f"communicator +{mib(point.first_communicator_bytes)} MiB once per process, one-rank communicator "
              f"{mib(point.one_rank_communicator_bytes)} MiB")
    from memprobe.verbosity import info

    info(f"memprobe: wrote {out}")

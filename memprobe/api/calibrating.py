"""calibrate: one GPU's per-process constants for the estimate, measured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from memprobe.api.options import CalibrateOptions, options_of

if TYPE_CHECKING:
    from memprobe.estimate.calibration import Calibration

__all__ = ["calibrate"]


def calibrate(options: Optional[CalibrateOptions] = None, **fields_: Any) -> "Calibration":
    """Measure one GPU's per-process constants for :func:`estimate` and write them to ``out`` (needs a GPU; under a
    minute). The parent reads NVML only; CUDA and NCCL run in processes of their own.

    >>> calibration = calibrate(out="my-h200.json", nvlinks=18)           # doctest: +SKIP
    >>> estimate(tp=8, ep=4, calibration="my-h200.json")                  # doctest: +SKIP
    """
    from memprobe.launch.calibrate import calibrate as measure_calibration

    conf = options_of(CalibrateOptions, options, fields_)
    return measure_calibration(Path(conf.out), conf.nvlinks, conf.gpu_index)

"""memprobe as plain Python: what every ``memprobe`` command does, for an engine's own tests and scripts.

Each function takes one typed options value (a frozen dataclass whose field defaults are the command
line's defaults: the CLI reads them from here) or the same fields as keywords, and returns a typed value;
nothing is printed but notes on stderr, progress when ``launch.progress`` is on, and nothing exits.
Bad input raises :class:`UsageError` before anything is launched or written; every error is a
:class:`MemprobeError` whose ``exit_code`` is the CLI's. A path may be a ``str`` or an ``os.PathLike``; a value
of the wrong type (``out_dir=5``, ``stacks=5``) is an :class:`OptionTypeError`, a UsageError (exit 2) that is
also a TypeError; a ``str`` where a sequence of names is asked for is that one name.

    >>> from memprobe import api
    >>> estimate = api.estimate(tp=8, ep=4, stacks="lean")      # no GPU, nothing measured
    >>> api.is_estimate(estimate)
    True
    >>> worst = max(api.total_after_first_use(estimate, "tp8-ep4-lean").values())

Functions: :func:`plan` (groups of a layout), :func:`estimate` (a comparison estimated from NCCL's rules and a
calibration), :func:`calibrate` (measure a GPU's constants for the estimate), :func:`check_estimate` (estimate
beside measured runs), :func:`run` (measure one layout),
:func:`compare` (measure several), :func:`load` (a saved run or comparison), :func:`make_baseline` (write a
baseline file), :func:`judge` (a gate's verdict). Helpers read per-rank figures out of what they return:
:func:`total_after_first_use`, :func:`communicators`. Launch settings (``--device cpu`` and the torchrun options)
are a :class:`LaunchOptions` under ``launch``.

The package, one module per command family: :mod:`~memprobe.api.options` (every options value),
:mod:`~memprobe.api.results` (what the functions return, per-rank helpers), :mod:`~memprobe.api.planning` (plan,
estimate, check_estimate), :mod:`~memprobe.api.measuring` (run, compare), :mod:`~memprobe.api.loading` (load),
:mod:`~memprobe.api.gating` (judge, make_baseline), :mod:`~memprobe.api.calibrating` (calibrate) and
:mod:`~memprobe.api.scenarios` (the scenarios estimate and compare build). ``__all__`` is the public surface.
"""

from __future__ import annotations

from typing import Any

from memprobe.api.calibrating import calibrate
from memprobe.api.gating import judge, make_baseline
from memprobe.api.loading import load
from memprobe.api.measuring import compare, gathered_elsewhere, run
from memprobe.api.options import (
    BaselineOptions, CalibrateOptions, CompareOptions, EstimateOptions, GateOptions, LaunchOptions, PlanOptions,
    RunOptions, Widths, Workers,
)
from memprobe.api.planning import check_estimate, estimate, plan
from memprobe.api.results import BaselineUpdate, Plan, communicators, is_estimate, total_after_first_use
from memprobe.api.scenarios import check_choices
from memprobe.errors import (
    DamagedInput, ExitCode, IncomparableError, MeasurementError, MemprobeError, OptionTypeError, UsageError,
)

__all__ = [
    # options
    "BaselineOptions", "CalibrateOptions", "CompareOptions", "EstimateOptions", "GateOptions", "LaunchOptions",
    "PlanOptions", "RunOptions",
    # results
    "BaselineUpdate", "Plan", "Verdict", "communicators", "is_estimate", "total_after_first_use",
    # errors
    "DamagedInput", "ExitCode", "IncomparableError", "MeasurementError", "MemprobeError", "OptionTypeError",
    "UsageError",
    # one function per command
    "calibrate", "check_estimate", "compare", "estimate", "judge", "load", "make_baseline", "plan", "run",
]
# Also importable, for memprobe's own commands (not part of the surface above): Widths, Workers (the options the
# commands share), check_choices (estimate --check's early check), gathered_elsewhere (run and compare across nodes).


def __getattr__(name: str) -> Any:
    """``api.Verdict``: :func:`judge`'s value (memprobe.gate.judge.GateResult: ``exit_code``, ``findings``,
    ``breaches``, ``headline()``), imported when first asked for so that the estimate path stays light."""
    if name == "Verdict":
        from memprobe.gate.judge import GateResult

        return GateResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Where a run's time went (``--timings``): phases, then the slowest steps."""

from __future__ import annotations

from typing import IO, Any

from memprobe.model.records import RunTimings
from memprobe.model.timings import PHASES

LABELS = {"torchrun_start": "torchrun start", "import": "import (interpreter, torch)",
          "queued": "queued (fork; earlier scenarios)", "cuda_context": "CUDA context",
          "steps": "steps (groups, communicators)", "gather": "gather", "teardown": "teardown (destroy groups)",
          "workers_exit": "workers exit", "torchrun_exit": "torchrun exit (launch ends)",
          "gpu_release": "GPU release wait"}
SLOWEST_STEPS = 5


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def timing_lines(name: str, timings: RunTimings | None) -> list[str]:
    if timings is None:
        return [f"timings {name}: none recorded (a run made before memprobe recorded them)"]
    phases = timings.phases
    lines = [f"timings {name} (each phase on the slowest rank of this node):"]
    lines += [f"  {LABELS[phase]:<32} {_seconds(phases.get(phase)):>9}" for phase in PHASES]
    lines.append(f"  {'total (the whole launch)':<32} {_seconds(timings.total_s):>9}")
    slowest = sorted(timings.steps, key=lambda item: -item[2])[:SLOWEST_STEPS]
    if slowest:
        lines.append("  slowest steps: " + ", ".join(f"{group + '/' if group else ''}{step} {seconds:.2f} s"
                                                     for group, step, seconds in slowest))
    return lines


def render_timings(name: str, record: Any, stream: IO[str]) -> None:
    stream.write("\n".join(timing_lines(name, getattr(record, "timings", None))) + "\n")

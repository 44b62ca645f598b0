"""Where a run's time went, from the parent's clock and the workers' stamped events.

Every event a worker streams carries ``time`` (``time.time()``, the host clock the parent
shares for its own ranks). Phases, in order, each measured on the slowest local rank:

* ``torchrun_start``: launch -> the slowest rank's launcher runs (``launched``; ``started`` in runs
  made before one launch measured several scenarios): torchrun's own import, rendezvous and spawn;
* ``import``: -> ``imported`` (interpreter, torch and memprobe's worker modules), once per launch;
* ``queued``: ``imported`` -> the scenario's measuring process ``started`` (the fork, and in-turn
  launches the scenarios before it; none in older runs);
* ``cuda_context``: -> the ``cuda_context`` reading (NVML set-up and the context);
* ``steps``: ``cuda_context`` reading -> ``end`` reading (every group and communicator,
  broken down per step in ``steps``);
* ``gather``: ``end`` reading -> ``gathered`` (rank 0 collects every reading; files written);
* ``teardown``: ``gathered`` -> ``done`` (communicators and process groups destroyed);
* ``workers_exit``: ``done`` -> the scenario's last measuring process gone;
* ``torchrun_exit``: -> torchrun exited (the launch's other scenarios, its launchers' exit, torchrun's exit
  barrier and store);
* ``gpu_release``: waiting until NVML no longer lists the workers.
"""

from __future__ import annotations

from typing import Callable

from memprobe.model.events import Done, Launched, PhaseName, PhaseReached, ReadingTaken, Started, WorkerEvent
from memprobe.model.records import RunTimings
from memprobe.model.steps import CUDA_CONTEXT, END

PHASES: tuple[str, ...] = ("torchrun_start", "import", "queued", "cuda_context", "steps", "gather", "teardown", "workers_exit",
                          "torchrun_exit", "gpu_release")

EventsByRank = dict[int, list[WorkerEvent]]


def _slowest(events_by_rank: EventsByRank, match: Callable[[WorkerEvent], bool]) -> float | None:
    firsts = [next((e.time for e in events if match(e)), None) for events in events_by_rank.values()]
    stamps = [stamp for stamp in firsts if stamp is not None]
    return max(stamps) if stamps else None


def _reading(step: str, group: str = "") -> Callable[[WorkerEvent], bool]:
    return lambda e: isinstance(e, ReadingTaken) and e.reading.step == step and (e.reading.group or "") == group


def _phase(name: PhaseName) -> Callable[[WorkerEvent], bool]:
    return lambda e: isinstance(e, PhaseReached) and e.name == name


def _of(kind: type) -> Callable[[WorkerEvent], bool]:
    return lambda e: isinstance(e, kind)


def _step_times(events_by_rank: EventsByRank) -> list[tuple[str, str, float]]:
    """Seconds per step: the slowest rank's reading time minus the slowest rank's previous reading time."""
    per_sequence: dict[int, tuple[str, str, float]] = {}
    for events in events_by_rank.values():
        for event in events:
            if isinstance(event, ReadingTaken):
                key = event.reading.sequence
                current = per_sequence.get(key)
                if current is None or event.time > current[2]:
                    per_sequence[key] = (event.reading.group or "", event.reading.step, float(event.time))
    ordered = [per_sequence[key] for key in sorted(per_sequence)]
    return [(group, step, round(stamp - ordered[index - 1][2], 3))
            for index, (group, step, stamp) in enumerate(ordered) if index > 0 and step != CUDA_CONTEXT]


def run_timings(events_by_rank: EventsByRank, launched_at: float, workers_exited_at: float | None,
                exited_at: float, gpu_release_s: float | None) -> RunTimings:
    launched = _slowest(events_by_rank, _of(Launched))
    started = _slowest(events_by_rank, _of(Started))
    imported = _slowest(events_by_rank, _phase(PhaseName.IMPORTED))
    marks = [
        launched_at,
        launched if launched is not None else started,  # a run made before launchers: its workers' start
        imported,
        started if launched is not None else imported,  # older runs: no queue, the context follows the import
        _slowest(events_by_rank, _reading(CUDA_CONTEXT)),
        _slowest(events_by_rank, _reading(END)),
        _slowest(events_by_rank, _phase(PhaseName.GATHERED)),
        _slowest(events_by_rank, _of(Done)),
        workers_exited_at,
        exited_at,
    ]
    phases: dict[str, float | None] = {}
    for index, name in enumerate(PHASES[:-1]):
        start, end = marks[index], marks[index + 1]
        phases[name] = round(end - start, 3) if start is not None and end is not None else None
    if launched is None:
        phases["queued"] = None
    phases["gpu_release"] = gpu_release_s
    total = exited_at - launched_at + (gpu_release_s or 0.0)
    return RunTimings(phases=phases, steps=_step_times(events_by_rank), total_s=round(total, 3))

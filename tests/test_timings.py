"""Per-phase timings of a run: computed from the workers' stamped events and the parent's clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from memprobe.model.events import Done, Launched, PhaseName, PhaseReached, ReadingTaken, Started, WorkerEvent
from memprobe.model.records import Reading
from memprobe.model.timings import PHASES, run_timings
from memprobe.reports.timings import timing_lines


def reading(sequence: int, group: str, step: str, time: float) -> ReadingTaken:
    return ReadingTaken(Reading(rank=0, sequence=sequence, step=step, group=group, status="ok", primary_bytes=0,
                                process_bytes=0, device_used_bytes=None, torch_reserved_bytes=None, other_gpus_bytes=None,
                                elapsed_s=0.0), time=time)


def events(start: float, offset: float = 0.0) -> list[WorkerEvent]:
    """One rank's stream: the launcher's launched and imported, the measuring process's started, four readings,
    gathered, done (times relative to ``start``)."""
    t = start + offset
    return [
        Launched(pid=10, time=t + 1.0),
        PhaseReached(name=PhaseName.IMPORTED, time=t + 3.0),
        Started(pid=11, time=t + 3.2),
        reading(0, "", "start", t + 3.5),
        reading(1, "", "cuda_context", t + 3.6),
        reading(2, "world", "world", t + 4.1),
        reading(3, "", "end", t + 4.6),
        PhaseReached(name=PhaseName.GATHERED, time=t + 4.8),
        Done(time=t + 5.0),
    ]


def test_phases_follow_the_slowest_rank_and_add_up_to_the_total():
    start = 1000.0
    timings = run_timings({0: events(start), 1: events(start, offset=0.25)}, launched_at=start,
                          workers_exited_at=start + 6.0, exited_at=start + 6.5, gpu_release_s=0.5)
    phases = timings.phases
    assert list(phases) == list(PHASES)
    assert phases["torchrun_start"] == pytest.approx(1.25)  # launch -> the slowest rank's launcher
    assert phases["import"] == pytest.approx(2.0) and phases["queued"] == pytest.approx(0.2)
    assert phases["cuda_context"] == pytest.approx(0.4)
    assert phases["steps"] == pytest.approx(1.0) and phases["gather"] == pytest.approx(0.2)
    assert phases["teardown"] == pytest.approx(0.2)
    assert phases["workers_exit"] == pytest.approx(0.75) and phases["torchrun_exit"] == pytest.approx(0.5)
    assert phases["gpu_release"] == 0.5
    assert timings.total_s == pytest.approx(7.0) == pytest.approx(sum(phases.values()))
    assert timings.steps == [("world", "world", 0.5), ("", "end", 0.5)]


def test_a_run_made_before_launchers_has_no_queue_and_its_workers_start_ends_torchrun_start():
    start = 10.0
    old = [event for event in events(start) if not isinstance(event, Launched)]
    old[1] = replace(old[1], time=start + 1.0)  # then, the worker itself streamed started first
    old[0], old[1] = old[1], old[0]
    phases = run_timings({0: old}, start, start + 6.0, start + 6.5, None).phases
    assert phases["torchrun_start"] == pytest.approx(1.0) and phases["import"] == pytest.approx(2.0)
    assert phases["queued"] is None and phases["cuda_context"] == pytest.approx(0.6)


def test_a_phase_that_never_happened_is_missing_not_zero():
    start = 50.0
    stream = [event for event in events(start)
              if not isinstance(event, Done) and getattr(event, "name", None) != PhaseName.GATHERED]
    phases = run_timings({0: stream}, start, None, start + 9.0, None).phases
    assert phases["gather"] is None and phases["teardown"] is None and phases["workers_exit"] is None
    assert phases["gpu_release"] is None and phases["steps"] == pytest.approx(1.0)


def test_rendering_names_every_phase_and_the_slowest_steps():
    timings = run_timings({0: events(0.0)}, 0.0, 6.0, 6.5, 0.5)
    text = "\n".join(timing_lines("tp4-ep2-full", timings))
    for label in ("torchrun start", "import", "queued", "CUDA context", "steps", "gather", "teardown", "workers exit",
                  "torchrun exit", "GPU release wait", "total"):
        assert label in text
    assert "  total (the whole launch)            7.00 s" in text.splitlines()
    assert "slowest steps: world/world 0.50 s, end 0.50 s" in text
    assert timing_lines("old", None) == ["timings old: none recorded (a run made before memprobe recorded them)"]

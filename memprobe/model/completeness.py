"""Whether a run folder's readings are whole: every rank and step once, nothing more.

A run whose ``run.json`` says ``complete`` must hold, for every rank of its world, one reading of every
step the rank takes; anything less (a ``readings.csv`` cut short, a rank or step lost) contradicts the
record, so the folder is damaged (exit 2) and nothing may be judged from it. A run still ``running``
(its memprobe stopped before it wrote the results) holds no measurement to show (exit 3).
"""

from __future__ import annotations

from typing import Any, Iterable

from memprobe import engines
from memprobe.errors import DamagedInput, MeasurementError
from memprobe.engines.stacks import stack_from_record
from memprobe.model.records import RunStatus
from memprobe.model.steps import sequence


def expected_steps(record: Any, readings: Iterable[Any]) -> list[tuple[str, str]]:
    """``(group, step)`` of every reading one rank takes. A reproduction builds its plan's groups; an installed
    engine builds what its release builds (SGLang 0.5.10 and 0.5.11 have no self_pp), so there every rank must
    hold the steps any rank holds."""
    ref = engines.get(record.engine, where=f"run {record.run_id}: engine")
    if ref.installed:
        return sorted({(reading.group, reading.step) for reading in readings})
    engine = ref.engine
    # the stack decides the groups where it stands for a release (vLLM 0.11 builds EP for dense models too)
    stack = stack_from_record(engine, record.stack, f"run {record.run_id}: stack")
    plan = engine.plan_for(engine.layout(record.layout), stack)
    return sequence((group.name for group in plan.built_groups()), engine.kind_names)


def _shown(items: list[str]) -> str:
    return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")


def check_ranks_in_world(record: Any, readings: Iterable[Any], source: str, ranks: Iterable[int] | None = None) -> None:
    """Every rank of ``readings`` (or ``ranks``, where readings stand for ranks that read alike) inside the world."""
    outside = sorted(rank for rank in (ranks if ranks is not None else {reading.rank for reading in readings})
                     if not 0 <= rank < record.world_size)
    if outside:
        raise DamagedInput(f"{source}: rank {outside[0]} is outside the run's world of {record.world_size} ranks")


def check_whole(record: Any, readings: list[Any], source: str, classes: dict[int, int] | None = None) -> None:
    """Every rank and step of a run that says it completed (see the module docstring). A run gathered on
    another node (``results_at``) holds only this node's ranks by design and is not checked here. ``classes``
    (:attr:`Run.classes`): rank -> the rank whose readings it shares, which alone are in ``readings``."""
    check_ranks_in_world(record, readings, source, classes.keys() if classes else None)
    if record.status != RunStatus.COMPLETE or record.results_at is not None:
        return
    steps = expected_steps(record, readings)
    held: dict[int, set[tuple[str, str]]] = {}
    for reading in readings:
        held.setdefault(reading.rank, set()).add((reading.group, reading.step))
    owner_of = classes or {rank: rank for rank in held}
    absent = [rank for rank in range(record.world_size) if rank not in owner_of]
    lacking_of: dict[int, list[str]] = {}  # per rank whose readings stand for others: worked out once
    for rank in range(record.world_size):  # the first rank that lacks anything, as a file cut short lacks it
        if rank not in owner_of:
            raise DamagedInput(f"{source}: no readings of rank {_shown([str(r) for r in absent])} although run.json "
                               f"says the run completed on {record.world_size} ranks (truncated?)")
        owner = owner_of[rank]
        if owner not in lacking_of:
            lacking_of[owner] = [f"{group}/{step}" if group and group != step else step for group, step in steps
                                 if (group, step) not in held[owner]]
        lacking = lacking_of[owner]
        if lacking:
            raise DamagedInput(f"{source}: rank {rank} has no reading of {_shown(lacking)} although run.json says the "
                               f"run completed (truncated or edited?)")


def check_finished(record: Any, run_dir: Any) -> None:
    """A run left ``running`` (memprobe died or was killed before it wrote the results): nothing to show or judge."""
    if record.status == RunStatus.RUNNING:
        raise MeasurementError(f"{run_dir}/run.json: status running: that run never finished (memprobe stopped before it "
                               f"wrote readings.csv), so it holds no measurement", str(run_dir))

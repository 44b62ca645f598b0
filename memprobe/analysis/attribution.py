"""Turn a rank's absolute readings into bytes added by each step, group and communicator.

Every delta is ``primary_bytes`` of a reading minus that of the reading before it on the
same rank, so the parts always add up to ``end - start``. A delta whose either side is
unavailable is ``None`` (unknown), never zero.

A step that was skipped (status ``skipped``: not in the stack, width 1, ``--device cpu``) built
nothing, so it is charged 0 bytes and whatever the reading moved meanwhile (host-RSS noise on CPU)
goes to ``unattributed``, so that no table shows bytes for a step that did nothing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

from memprobe.model.rank_table import rank_table
from memprobe.model.records import Reading, Run, StepStatus
from memprobe.model.steps import is_group_init_step

# Component keys, in display order, for one group ``G``:
#   G/groups_created, G/pynccl, G/custom_allreduce  (bytes added while the group was built)
#   G/init  (their sum)      G/first_use  (the first collective on G's torch NCCL group)
CONTEXT = "cuda_context"
WORLD = "world"
TOTAL_AFTER_INIT = "total_after_init"
TOTAL_AFTER_FIRST_USE = "total_after_first_use"
UNATTRIBUTED = "unattributed"


def subtract(after: int | None, before: int | None) -> int | None:
    if after is None or before is None:
        return None
    return after - before


def _add(total: int | None, part: int | None) -> int | None:
    if total is None or part is None:
        return None
    return total + part


def rank_readings(run: Run) -> dict[int, list[Reading]]:
    """Each rank's readings in order; ranks that read alike (an estimate's alike ranks, measured ranks with the same
    readings) share one list: the run's rank table (:mod:`memprobe.model.rank_table`), made once per run."""
    return rank_table(run).by_rank()


def _per_list(readings_by_rank: dict[int, list[Reading]], compute: Callable[[list[Reading]], Any]) -> dict[int, Any]:
    """``compute`` once per distinct readings list (ranks that share one get equal copies)."""
    done: dict[int, Any] = {}
    result: dict[int, Any] = {}
    for rank, readings in sorted(readings_by_rank.items()):
        if id(readings) not in done:
            done[id(readings)] = compute(readings)
        value = done[id(readings)]
        result[rank] = type(value)(value)
    return result


Measure = Callable[[Reading], "int | None"]


def primary(reading: Reading) -> int | None:
    """All the rank's bytes (NVML per process, device or host RSS): what every report adds up."""
    return reading.primary_bytes


def torch_cache(reading: Reading) -> int | None:
    """The part held by torch's caching allocator (``torch.cuda.memory_reserved``; None on CPU runs)."""
    return reading.torch_reserved_bytes


def step_deltas(readings: list[Reading], measure: Measure = primary) -> list[tuple[Reading, int | None]]:
    """``(reading, bytes added since the previous reading)``; the first reading adds nothing. ``measure`` picks
    which bytes: :func:`primary` (all of them) or :func:`torch_cache` (the torch caching-allocator part)."""
    result: list[tuple[Reading, int | None]] = []
    previous: Reading | None = None
    for reading in readings:
        if previous is None:  # the first reading adds nothing, where its measure is known at all (CPU: no torch cache)
            delta = None if measure(reading) is None else 0
        else:
            delta = subtract(measure(reading), measure(previous))
        result.append((reading, delta))
        previous = reading
    return result


def charged_deltas(readings: list[Reading], measure: Measure = primary) -> list[tuple[Reading, int | None, int | None]]:
    """``(reading, bytes charged to its step, bytes moved to unattributed)``: a skipped step is
    charged 0 and its delta (noise, it built nothing) is moved to ``unattributed``."""
    result: list[tuple[Reading, int | None, int | None]] = []
    for reading, delta in step_deltas(readings, measure):
        if reading.status == StepStatus.SKIPPED and reading.step != "start":
            result.append((reading, None if delta is None else 0, delta))  # unknown stays unknown (CPU: no torch cache)
        else:
            result.append((reading, delta, 0))
    return result


def skipped_keys(readings: list[Reading]) -> set[str]:
    """Component keys (``G/step``, ``cuda_context``) whose step was skipped on this rank."""
    keys = set()
    for reading in readings:
        if reading.status == StepStatus.SKIPPED and reading.step != "start":
            keys.add(reading.step if not reading.group or reading.step == reading.group else f"{reading.group}/{reading.step}")
    return keys


def skipped_by_rank(run: Run) -> dict[int, set[str]]:
    return _per_list(rank_readings(run), skipped_keys)


def rank_components(readings: list[Reading], measure: Measure = primary) -> dict[str, int | None]:
    """Bytes per component for one rank (see module docstring for the keys), of the bytes ``measure`` picks."""
    parts: dict[str, int | None] = {}
    last_init_reading: Reading | None = None
    for reading, delta, moved in charged_deltas(readings, measure):
        if moved != 0:
            parts[UNATTRIBUTED] = _add(parts.get(UNATTRIBUTED, 0), moved)
        if reading.step == "start":
            continue
        if reading.step == CONTEXT:
            parts[CONTEXT] = delta
        elif reading.step == "world":
            parts[WORLD] = delta
        elif is_group_init_step(reading.step):
            parts[f"{reading.group}/{reading.step}"] = delta
            key = f"{reading.group}/init"
            parts[key] = _add(parts.get(key, 0), delta)
        elif reading.step == "first_use":
            parts[f"{reading.group}/first_use"] = delta
        else:  # "before" and "end": nothing should happen between steps; keep it visible
            parts[UNATTRIBUTED] = _add(parts.get(UNATTRIBUTED, 0), delta)
        if reading.step != "first_use" and reading.step != "end":
            last_init_reading = reading
    finished_init = any(r.step in ("first_use", "end") for r in readings)
    # A rank that stopped during init has no "after init" total (its last reading is not one).
    parts[TOTAL_AFTER_INIT] = measure(last_init_reading) if last_init_reading is not None and finished_init else None
    end = [r for r in readings if r.step == "end"]
    parts[TOTAL_AFTER_FIRST_USE] = measure(end[-1]) if end else None
    return parts


def components_by_rank(run: Run, measure: Measure = primary) -> dict[int, dict[str, int | None]]:
    return _per_list(rank_readings(run), lambda readings: rank_components(readings, measure))


@dataclass(frozen=True)
class Split:
    """One component of one rank, measured in two parts that add up to ``total``: what torch's caching
    allocator reserved (segments created in that step: a 2 MiB tensor in a fresh pool adds a 20 MiB segment)
    and everything else (NCCL, the CUDA driver, IPC mappings, custom all-reduce buffers outside torch)."""

    total: int | None
    torch_cache: int | None

    @property
    def rest(self) -> int | None:
        return subtract(self.total, self.torch_cache)


def splits_by_rank(run: Run) -> dict[int, dict[str, Split]]:
    """Per rank and component key (as :func:`components_by_rank`): the total and its torch-cache part."""
    totals, cache = components_by_rank(run), components_by_rank(run, torch_cache)
    return {rank: {key: Split(value, cache[rank].get(key)) for key, value in parts.items()} for rank, parts in totals.items()}


@dataclass(frozen=True)
class Spread:
    """A component across ranks: the worst (largest) rank and the spread."""

    minimum: int | None
    median: int | None  # statistics.median: with an even count, the mean of the two middle values
    maximum: int | None
    worst_rank: int | None
    ranks_known: int

    @property
    def spread(self) -> int | None:
        if self.minimum is None or self.maximum is None:
            return None
        return self.maximum - self.minimum


def spread(values: dict[int, int | None]) -> Spread:
    known = {rank: value for rank, value in values.items() if value is not None}
    if not known:
        return Spread(None, None, None, None, 0)
    worst_rank = max(sorted(known), key=lambda rank: known[rank])
    ordered = sorted(known.values())
    return Spread(
        minimum=ordered[0],
        median=int(statistics.median(ordered)),
        maximum=ordered[-1],
        worst_rank=worst_rank,
        ranks_known=len(known),
    )


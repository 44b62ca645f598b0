"""A run's ranks in rank classes: ranks whose readings are the same apart from the rank number share one class.

An estimate knows its classes (``Run.classes``: ranks placed alike in every group read the same bytes); a measured
run's ranks form one class each unless every field of every reading but the rank (bytes, status, note, elapsed
seconds) is equal. Every table, export and plot reads a run's ranks through its one :class:`RankTable` (made once per
run, :func:`rank_table`), so work per rank class is done once, not once per rank.

The rank-to-class map is written compactly as ranges, ``[[first, last, class], ...]`` (first and last inclusive), by
the comparison JSON (schema 2); :func:`classes_from_ranges` reads it back and refuses a map that misses a rank,
names a rank twice or names an unknown class (damaged input).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Callable

from memprobe.errors import DamagedInput
from memprobe.model.records import Reading, Run

_ALL_BUT_RANK = attrgetter(*(f.name for f in fields(Reading) if f.name != "rank"))


@dataclass
class RankClass:
    """Ranks whose readings are the same apart from the rank number: the first rank's readings, in order."""

    index: int
    ranks: list[int]
    readings: list[Reading]
    _derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def representative(self) -> int:
        return self.ranks[0]

    def derived(self, key: str, compute: Callable[[list[Reading]], Any]) -> Any:
        """``compute(readings)`` made once per class and ``key`` (components, skipped steps, a summary ...)."""
        if key not in self._derived:
            self._derived[key] = compute(self.readings)
        return self._derived[key]


@dataclass
class RankTable:
    """A run's rank classes (in order of their first rank) and every rank's class."""

    classes: list[RankClass]
    class_of: dict[int, int]  # rank -> index into classes, in rank order

    @property
    def ranks(self) -> list[int]:
        return list(self.class_of)

    def readings_of(self, rank: int) -> list[Reading]:
        """Rank ``rank``'s readings (the class's; their ``rank`` field is the class's first rank)."""
        return self.classes[self.class_of[rank]].readings

    def by_rank(self) -> dict[int, list[Reading]]:
        """rank -> its class's readings list (ranks of one class share one list object)."""
        lists = [rank_class.readings for rank_class in self.classes]
        return {rank: lists[index] for rank, index in self.class_of.items()}

    def ranges(self) -> list[list[int]]:
        """The rank-to-class map as ``[[first, last, class], ...]``: consecutive ranks of one class in one entry."""
        entries: list[list[int]] = []
        for rank, index in self.class_of.items():
            if entries and entries[-1][2] == index and entries[-1][1] == rank - 1:
                entries[-1][1] = rank
            else:
                entries.append([rank, rank, index])
        return entries


def build_rank_table(run: Run) -> RankTable:
    """The rank classes of ``run`` (see the module docstring)."""
    per_rank: dict[int, list[Reading]] = {}
    for reading in run.readings:
        per_rank.setdefault(reading.rank, []).append(reading)
    for readings in per_rank.values():
        readings.sort(key=lambda r: r.sequence)
    if run.classes:  # an estimate: rank -> the representative whose readings it shares
        owners = run.classes
    else:
        keys: dict[tuple, int] = {}
        owners = {rank: keys.setdefault(_reading_key(per_rank[rank]), rank) for rank in sorted(per_rank)}
    index_of: dict[int, int] = {}
    classes: list[RankClass] = []
    class_of: dict[int, int] = {}
    for rank in sorted(owners):
        owner = owners[rank]
        index = index_of.get(owner)
        if index is None:
            index = index_of[owner] = len(classes)
            classes.append(RankClass(index=index, ranks=[], readings=per_rank[owner]))
        classes[index].ranks.append(rank)
        class_of[rank] = index
    return RankTable(classes=classes, class_of=class_of)


def _reading_key(readings: list[Reading]) -> tuple:
    return tuple(map(_ALL_BUT_RANK, readings))


def rank_table(run: Run) -> RankTable:
    """``run``'s rank table, made on first use and kept with the run (a run's readings do not change once loaded)."""
    table = getattr(run, "_rank_table", None)
    if table is None:
        table = build_rank_table(run)
        object.__setattr__(run, "_rank_table", table)
    return table


def classes_from_ranges(ranges: Any, class_count: int, world_size: int, source: str, every: bool = True) -> dict[int, int]:
    """rank -> class index from ``[[first, last, class], ...]``: each rank at most once (``every``: every rank of the
    world, as a run that completed holds), inside the world, every class named; else :class:`DamagedInput`."""
    if not isinstance(ranges, list):
        raise DamagedInput(f"{source}: rank_classes must be a list of [first, last, class]")
    class_of: dict[int, int] = {}
    for entry in ranges:
        if (not isinstance(entry, list) or len(entry) != 3
                or not all(isinstance(value, int) and not isinstance(value, bool) for value in entry)):
            raise DamagedInput(f"{source}: rank_classes entry {entry!r} is not [first, last, class] of whole numbers")
        first, last, index = entry
        if not 0 <= index < class_count:
            raise DamagedInput(f"{source}: rank_classes entry {entry!r} names class {index}, but there are {class_count}")
        if not 0 <= first <= last < world_size:
            raise DamagedInput(f"{source}: rank_classes entry {entry!r} is outside the world of {world_size} ranks")
        for rank in range(first, last + 1):
            if rank in class_of:
                raise DamagedInput(f"{source}: rank {rank} is mapped twice in rank_classes")
            class_of[rank] = index
    if every and len(class_of) != world_size:
        missing = next(rank for rank in range(world_size) if rank not in class_of)
        raise DamagedInput(f"{source}: rank_classes maps {len(class_of)} of {world_size} ranks (rank {missing} has no class)")
    unused = set(range(class_count)) - set(class_of.values())
    if unused:
        raise DamagedInput(f"{source}: rank class {min(unused)} has no rank in rank_classes")
    return dict(sorted(class_of.items()))


def rank_text(ranks: list[int]) -> str:
    """A rank list for a table cell: runs of consecutive ranks as ``first-last``, and four or more runs of one
    length at one distance as a progression, ``16,24,...,2032`` or ``17-22,25-30,...,2033-2038``; joined by ``, ``."""
    runs: list[list[int]] = []
    for rank in ranks:
        if runs and runs[-1][1] == rank - 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    parts, index = [], 0
    while index < len(runs):
        end = index
        while (end + 1 < len(runs) and runs[end + 1][1] - runs[end + 1][0] == runs[index][1] - runs[index][0]
               and (end == index or runs[end + 1][0] - runs[end][0] == runs[index + 1][0] - runs[index][0])):
            end += 1
        if end - index >= 3:  # four runs or more: the progression hides at least one
            parts.append(",".join((_run_text(runs[index]), _run_text(runs[index + 1]), "...", _run_text(runs[end]))))
            index = end + 1
        else:
            parts.append(_run_text(runs[index]))
            index += 1
    return ", ".join(parts)


def _run_text(run: list[int]) -> str:
    return str(run[0]) if run[0] == run[1] else f"{run[0]}-{run[1]}"


__all__ = ["RankClass", "RankTable", "build_rank_table", "classes_from_ranges", "rank_table", "rank_text"]

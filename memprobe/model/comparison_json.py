"""Reading a comparison's JSON export (``--json``, schema 1 or 2) back into a :class:`Comparison`.

Schema 1 holds every rank's readings and info in full; schema 2 holds them once per rank class with a
rank-to-class map (:mod:`memprobe.model.rank_table`). Either comes back as the runs it was written from, so
``report``, ``gate --results`` and ``memprobe.api.load`` read an export as they read the folders. What an export
cannot carry (NCCL's debug logs, event streams) is not there: the run has no folder (``path`` None).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memprobe.errors import DamagedInput
from memprobe.model.completeness import check_ranks_in_world, expected_steps
from memprobe.model.rank_table import RankClass, RankTable, classes_from_ranges
from memprobe.model.records import Reading, Run, RunRecord, RunStatus
from memprobe.model.scenario import Scenario

SCHEMAS = (1, 2)


@dataclass(frozen=True)
class ExportedComparison:
    """What a JSON export holds: the comparison's identity, its baseline and each scenario with its run."""

    comparison_id: str
    baseline: str
    runs: list[tuple[Scenario, Run]]


def load_comparison_json(path: Path) -> ExportedComparison:
    """The comparison a JSON export holds; a damaged or foreign file is :class:`DamagedInput` (one line)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedInput(f"{path}: unreadable or not JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("scenarios"), list) or "comparison_id" not in document:
        raise DamagedInput(f"{path}: not a memprobe comparison export (no comparison_id and scenarios)")
    schema = document.get("schema_version")
    if schema not in SCHEMAS:
        raise DamagedInput(f"{path}: schema_version {schema!r} is not one of {', '.join(map(str, SCHEMAS))}")
    runs = []
    for number, entry in enumerate(document["scenarios"]):
        where = f"{path}: scenarios[{number}]"
        try:
            run = _run_v1(entry, where) if schema == 1 else _run_v2(entry, document.get("plans") or {}, where)
            scenario = Scenario.from_definition(entry["definition"], where)
            runs.append((replace(scenario, name=str(entry["name"])), run))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DamagedInput(f"{where}: not a memprobe scenario ({type(error).__name__}: {error})") from None
    if not runs:
        raise DamagedInput(f"{path}: the export holds no scenario")
    names = [scenario.name for scenario, _ in runs]
    baseline = document.get("baseline")
    return ExportedComparison(comparison_id=str(document["comparison_id"]),
                              baseline=baseline if baseline in names else names[0], runs=runs)


def _readings(rows: list[dict[str, Any]], rank: int | None = None) -> list[Reading]:
    return [Reading(**(row if rank is None else {**row, "rank": rank})) for row in rows]


def _run_v1(entry: dict[str, Any], where: str) -> Run:
    record = RunRecord.from_dict(entry["run"], f"{where}.run")
    readings = _readings(entry["readings"])
    check_ranks_in_world(record, readings, where)
    _check_whole([(sorted({r.rank for r in readings}), readings)], record, where, every_rank=readings)
    return Run(record=record, readings=readings, path=None)


def _run_v2(entry: dict[str, Any], plans: dict[str, Any], where: str) -> Run:
    data = dict(entry["run"])
    key = data.pop("plan_ranks")
    if key not in plans:
        raise DamagedInput(f"{where}: plan_ranks {key!r} names no plan of the export's plans")
    data["plan"] = [{**group, "ranks": plans[key][group["name"]]} for group in data["plan"]]
    classes_data = entry["classes"]
    world = int(data["world_size"])
    whole = data.get("status") == RunStatus.COMPLETE and not data.get("results_at")  # every rank of the world
    class_of = classes_from_ranges(entry["rank_classes"], len(classes_data), world, where, every=whole)
    members: list[list[int]] = [[] for _ in classes_data]
    for rank, index in class_of.items():
        members[index].append(rank)
    for index, (ranks, item) in enumerate(zip(members, classes_data)):
        if item.get("ranks") != len(ranks):
            raise DamagedInput(f"{where}: class {index} says {item.get('ranks')!r} ranks, the map gives it {len(ranks)}")
    if "rank_info_columns" in entry:
        data["ranks"] = _rank_infos(classes_data, class_of, entry["rank_info_columns"], where)
    record = RunRecord.from_dict(data, f"{where}.run")
    classes = [RankClass(index=index, ranks=ranks, readings=_readings(item["readings"], ranks[0]))
               for index, (ranks, item) in enumerate(zip(members, classes_data))]
    readings = [reading for rank_class in classes for reading in rank_class.readings]
    check_ranks_in_world(record, readings, where)
    _check_whole([(rank_class.ranks, rank_class.readings) for rank_class in classes], record, where, every_rank=None)
    owners = {rank: classes[index].representative for rank, index in class_of.items()}
    run = Run(record=record, readings=readings, path=None, classes=owners if len(classes) < len(owners) else {})
    object.__setattr__(run, "_rank_table", RankTable(classes=classes, class_of=class_of))
    return run


def _rank_infos(classes: list[dict[str, Any]], class_of: dict[int, int], columns: dict[str, list[Any]],
                where: str) -> list[dict[str, Any]]:
    if not isinstance(columns, dict) or any(not isinstance(values, list) or len(values) != len(class_of)
                                            for values in columns.values()):
        raise DamagedInput(f"{where}: rank_info_columns must hold one list of {len(class_of)} values per field")
    infos = []
    for position, (rank, index) in enumerate(class_of.items()):
        info = {**classes[index]["rank_info"], "rank": rank}
        for name, values in columns.items():
            info[name] = values[position]
        infos.append(info)
    return infos


def _check_whole(groups: list[tuple[list[int], list[Reading]]], record: RunRecord, where: str,
                 every_rank: list[Reading] | None) -> None:
    """A run that says it completed holds every step on every rank (its classes' readings stand for their ranks)."""
    if record.status != RunStatus.COMPLETE or record.results_at is not None:
        return
    if every_rank is not None:
        from memprobe.model.completeness import check_whole

        check_whole(record, every_rank, where)
        return
    steps = expected_steps(record, [reading for _, readings in groups for reading in readings])
    for ranks, readings in groups:
        held = {(reading.group, reading.step) for reading in readings}
        lacking = [f"{group}/{step}" if group and group != step else step for group, step in steps if (group, step) not in held]
        if lacking:
            raise DamagedInput(f"{where}: rank {ranks[0]} has no reading of {', '.join(lacking[:3])} although the run "
                               f"says it completed")


__all__ = ["SCHEMAS", "ExportedComparison", "load_comparison_json"]

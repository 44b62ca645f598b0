"""Comparisons: runs of several scenarios, one of them the baseline; their folder index, loading and merging.

A comparison folder is ``<out>/<comparison-id>/`` with ``comparison.json`` and one run
folder per scenario (``<comparison-id>/<scenario-name>/run.json`` ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memprobe import engines
from memprobe.engines.stacks import stack_from_record
from memprobe.errors import DamagedInput, IncomparableError, MeasurementError, UsageError
from memprobe.model.comparison_json import load_comparison_json
from memprobe.model.completeness import check_finished
from memprobe.model.records import Run, RunStatus, atomic_write_text
from memprobe.model.run_files import load_run
from memprobe.model.scenario import DEFAULT_ENGINE, Scenario, ScenarioSet


@dataclass
class ScenarioRun:
    scenario: Scenario
    run: Run


@dataclass
class Comparison:
    """Runs of several scenarios, one of them the baseline the others are compared with."""

    comparison_id: str
    baseline: str
    runs: list[ScenarioRun]
    path: Path | None = None
    missing: list[str] = field(default_factory=list)  # "name (folder F)" of indexed scenarios without a run on disk

    def names(self) -> list[str]:
        return [item.scenario.name for item in self.runs]

    def get(self, name: str) -> ScenarioRun:
        for item in self.runs:
            if item.scenario.name == name:
                return item
        raise KeyError(name)

    def engine_notes(self) -> list[str]:
        """What the NCCL release of its estimated runs changes in the engines' own decisions (each note once;
        measured runs have none)."""
        return list(dict.fromkeys(note for item in self.runs
                                  for note in (item.run.record.environment.get("estimate") or {}).get("engine_notes", [])))


COMPARISON_FILE = "comparison.json"


def scenario_from_run(run: Run) -> Scenario:
    """The scenario a run measured: its recorded identity, or (runs made before it was recorded) the
    identity rebuilt from the layout, resolved stack and settings run.json has always held."""
    record = run.record
    where = str(run.path / "run.json") if run.path else record.run_id
    try:
        return _scenario_of(record, run, where)
    except DamagedInput:
        raise
    except UsageError as error:  # a recorded field no scenario can have: the file is damaged, never "no results"
        raise DamagedInput(f"{where}: {error}") from None
    except (TypeError, ValueError) as error:  # a layout that is not an object of widths, a field of another type
        raise DamagedInput(f"{where}: not a scenario memprobe recorded ({error})") from None


def _scenario_of(record: Any, run: Run, where: str) -> Scenario:
    if record.definition:
        return Scenario.from_definition(record.definition, where)
    engine = engines.get(record.engine or DEFAULT_ENGINE, where=f"{where}: engine").engine
    return Scenario(
        name=record.scenario or (run.path.name if run.path else record.run_id),
        layout=engine.layout_type(**record.layout),
        stack=record.stack_name,
        env_preset=record.env_preset,
        env=dict(record.env),
        warmup=record.warmup,
        engine=record.engine or DEFAULT_ENGINE,
        resolved_stack=stack_from_record(engine, record.stack, where),
    )


def write_comparison_index(path: Path, comparison_id: str, scenario_set: ScenarioSet, folders: dict[str, str]) -> None:
    document = {
        "schema_version": 1,
        "comparison_id": comparison_id,
        "baseline": scenario_set.baseline,
        "scenarios": [dict(s.definition(), folder=folders.get(s.name)) for s in scenario_set.scenarios],
    }
    atomic_write_text(path / COMPARISON_FILE, json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_comparison(path: str | Path) -> Comparison:
    """A comparison folder, a single run folder (a comparison of one scenario), or a comparison's JSON export.

    Raises:
        DamagedInput: a file contradicts itself or its record (a run that says complete lacks a rank or step).
        MeasurementError: a single run folder whose run never finished (status running); in a comparison
            such a scenario is listed in ``missing``, like one whose folder is gone.
        UsageError: not a run or comparison folder.
    """
    path = Path(path)
    if path.suffix == ".json" and path.is_file():  # a comparison's JSON export (schema 1 or 2)
        exported = load_comparison_json(path)
        return Comparison(comparison_id=exported.comparison_id, baseline=exported.baseline,
                          runs=[ScenarioRun(scenario, run) for scenario, run in exported.runs])
    index = path / COMPARISON_FILE
    if index.is_file():
        try:
            document = json.loads(index.read_text(encoding="utf-8"))
            entries = document["scenarios"]
            baseline = document["baseline"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:  # ValueError: not UTF-8, not JSON
            raise DamagedInput(f"{index}: not a memprobe comparison index ({type(error).__name__})") from None
        runs: list[ScenarioRun] = []
        missing: list[str] = []
        for entry in entries:
            folder = entry.get("folder")
            if not folder or not (path / folder / "run.json").is_file():
                # never started (the comparison stopped early), or the folder was lost: the caller says so
                missing.append(f"{entry.get('name', '?')} (no {path / str(folder or '?') / 'run.json'})")
                continue
            run = load_run(path / folder)
            if run.record.status == RunStatus.RUNNING:  # memprobe stopped before this scenario ended: no measurement
                missing.append(f"{entry.get('name', '?')} ({path / folder / 'run.json'} says status running: never finished)")
                continue
            runs.append(ScenarioRun(scenario=replace(scenario_from_run(run), name=entry["name"]), run=run))
        if not runs:
            raise MeasurementError(f"{path}: the comparison holds no finished run ({'; '.join(missing)})", str(path))
        names = [item.scenario.name for item in runs]
        return Comparison(
            comparison_id=str(document.get("comparison_id", path.name)),
            baseline=baseline if baseline in names else names[0],
            runs=runs,
            path=path,
            missing=missing,
        )
    if (path / "run.json").is_file():
        run = load_run(path)
        check_finished(run.record, path)
        scenario = scenario_from_run(run)
        return Comparison(comparison_id=run.record.run_id, baseline=scenario.name, runs=[ScenarioRun(scenario, run)], path=path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    raise UsageError(f"{path} is neither a run folder (run.json) nor a comparison folder ({COMPARISON_FILE})")


def _refuse_kinds_side_by_side(comparisons: list[Comparison]) -> None:
    """Folders shown together are set against the first one's baseline: GPU memory beside host RSS (--device cpu),
    or an estimate beside a measurement, would be subtracted across kinds of memory; the gate refuses that too."""
    from memprobe.model.memory_kind import describe, memory_kind

    kinds = {memory_kind(item.run): item for comparison in comparisons for item in comparison.runs}
    if len(kinds) > 1:
        shown = "; ".join(f"{item.run.path or item.scenario.name}: {describe(kind)}" for kind, item in kinds.items())
        raise IncomparableError(f"these folders hold different kinds of memory, never compared: {shown}")


def merge_comparisons(comparisons: list[Comparison]) -> Comparison:
    """Several saved runs or comparisons shown as one; the first one's baseline stays the baseline."""
    if len(comparisons) == 1:
        return comparisons[0]
    _refuse_kinds_side_by_side(comparisons)
    runs: list[ScenarioRun] = []
    seen: set[str] = set()
    for comparison in comparisons:
        for item in comparison.runs:
            name = item.scenario.name
            suffix = 2
            while name in seen:
                name = f"{item.scenario.name}-{suffix}"
                suffix += 1
            seen.add(name)
            runs.append(ScenarioRun(scenario=replace(item.scenario, name=name), run=item.run))
    return Comparison(comparison_id="+".join(c.comparison_id for c in comparisons), baseline=comparisons[0].baseline, runs=runs,
                      missing=[name for c in comparisons for name in c.missing])

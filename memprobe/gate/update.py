"""A baseline update's pieces: the runs it takes, the new document (the old file's thresholds kept), and
what changed, in lines for people."""

from __future__ import annotations

from typing import Any

from memprobe.errors import IncomparableError, MeasurementError, UsageError
from memprobe.gate.baseline import Baseline, build_baseline, check_metric_pattern, check_same_kind, default_thresholds, metric_sort_key
from memprobe.model.comparison import Comparison
from memprobe.model.memory_kind import memory_kind
from memprobe.model.scenario import ScenarioSet
from memprobe.units import mib_precise


def refuse_other_kinds(existing: Baseline | None, comparison: Comparison, source: str) -> None:
    """One kind of memory per baseline file: runs of two kinds, or of another kind than the file's, are refused."""
    kinds = {item.scenario.name: memory_kind(item.run) for item in comparison.runs}
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{name} {kind}" for name, kind in kinds.items())
        raise IncomparableError(f"{source} holds runs of several kinds of memory ({shown}); a baseline file holds one kind")
    if existing is not None:
        check_same_kind(existing, existing.names(), next(iter(kinds.values())), f"{source} holds")


def restrict(comparison: Comparison, wanted: list[str], source: str) -> Comparison:
    if comparison.missing and (not wanted or any(entry.split(" ", 1)[0] in wanted for entry in comparison.missing)):
        raise MeasurementError(f"{source}: {len(comparison.missing)} scenario(s) have no finished run: "
                               f"{'; '.join(comparison.missing)}; a baseline needs complete runs")
    if not wanted:
        return comparison
    unknown = [name for name in wanted if name not in comparison.names()]
    if unknown:
        raise UsageError(f"{source} holds no run of {', '.join(unknown)}; it holds {', '.join(comparison.names())}")
    runs = [item for item in comparison.runs if item.scenario.name in wanted]
    return Comparison(comparison_id=comparison.comparison_id, baseline=runs[0].scenario.name, runs=runs,
                      path=comparison.path)


def restrict_set(scenario_set: ScenarioSet, wanted: list[str]) -> ScenarioSet:
    if not wanted:
        return scenario_set
    scenarios = tuple(s for s in scenario_set.scenarios if s.name in wanted)
    return ScenarioSet(scenarios=scenarios, baseline=scenarios[0].name)


def new_document(comparison: Comparison, existing: Baseline | None, keep_others: bool) -> tuple[dict[str, Any], list[str]]:
    """The new baseline: measured scenarios, plus (with --scenario) the file's other ones; the
    file's thresholds and description are kept, less entries that name what no longer exists."""
    notes: list[str] = []
    thresholds = existing.thresholds_document if existing else default_thresholds()
    description = existing.document.get("description") if existing else None
    document = build_baseline(comparison, thresholds=default_thresholds(), description=description)
    if existing is not None and keep_others:
        for name, value in existing.document["scenarios"].items():
            document["scenarios"].setdefault(name, value)
        document["scenarios"] = dict(sorted(document["scenarios"].items()))
    scenarios = document["scenarios"]
    metrics_of = {name: {m for ranks in value["ranks"].values() for m in ranks} for name, value in scenarios.items()}
    all_metrics = set().union(*metrics_of.values())
    for name in sorted(thresholds.get("scenarios", {})):
        if name not in scenarios:
            notes.append(f"dropped thresholds.scenarios.{name}: no such scenario any more")
            del thresholds["scenarios"][name]
            continue
        nested = thresholds["scenarios"][name].get("metrics", {})
        for pattern in sorted(nested):
            if not check_metric_pattern(pattern, metrics_of[name]):
                notes.append(f"dropped thresholds.scenarios.{name}.metrics.{pattern}: matches no metric any more")
                del nested[pattern]
    for pattern in sorted(thresholds.get("metrics", {})):
        if not check_metric_pattern(pattern, all_metrics):
            notes.append(f"dropped thresholds.metrics.{pattern}: matches no metric any more")
            del thresholds["metrics"][pattern]
    document["thresholds"] = thresholds
    return document, notes


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Human lines for what differs between two baseline documents (for the update's output)."""
    if old is None:
        return []
    lines: list[str] = []
    old_scenarios, new_scenarios = old.get("scenarios", {}), new["scenarios"]
    for name in sorted(set(old_scenarios) | set(new_scenarios)):
        if name not in new_scenarios:
            lines.append(f"{name}: removed")
            continue
        if name not in old_scenarios:
            lines.append(f"{name}: added")
            continue
        before, after = old_scenarios[name], new_scenarios[name]
        if before.get("definition_hash") != after["definition_hash"]:
            lines.append(f"{name}: definition changed")
        for key in sorted(set(before.get("environment_key", {})) | set(after["environment_key"])):
            if before.get("environment_key", {}).get(key) != after["environment_key"].get(key):
                lines.append(f"{name}: environment {key} {before.get('environment_key', {}).get(key)!r} -> "
                             f"{after['environment_key'].get(key)!r}")
        for rank in sorted(set(before.get("ranks", {})) | set(after["ranks"]), key=int):
            a, b = before.get("ranks", {}).get(rank, {}), after["ranks"].get(rank, {})
            for metric in sorted(set(a) | set(b), key=metric_sort_key):
                if a.get(metric) != b.get(metric):
                    lines.append(f"{name} rank {rank} {metric}: {describe_change(a.get(metric), b.get(metric))}")
    if old.get("thresholds") != new.get("thresholds"):
        lines.append("thresholds changed")
    return lines


def describe_change(old: int | None, new: int | None) -> str:
    """``1,142 MiB -> 1,190 MiB``; where both read alike in MiB, the exact difference in bytes too."""
    text = f"{mib_precise(old)} -> {mib_precise(new)}"
    if old is not None and new is not None and mib_precise(old) == mib_precise(new):
        text += f" ({new - old:+,} bytes)"
    return text

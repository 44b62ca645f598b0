"""``memprobe baseline update``: write a deterministic baseline file from fresh measurements or saved runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from memprobe.commands.common import DEFAULT_OUT_DIR, QUIET, VERBOSE, measure
from memprobe.commands.gate import CALIBRATION, ESTIMATE, _fail, check_device_matches, gate_launch_options
from memprobe.estimate.calibration import find_calibration
from memprobe.commands.paths import check_output_path
from memprobe.errors import IncomparableError, MeasurementError, MemprobeError, UsageError
from memprobe.gate.baseline import (
    Baseline,
    build_baseline,
    check_same_kind,
    check_metric_pattern,
    default_thresholds,
    load_baseline,
    metric_sort_key,
    write_baseline,
)
from memprobe.units import mib_precise
from memprobe.launch.options import DEFAULT_TIMEOUT_S
from memprobe.model.comparison import Comparison, load_comparison
from memprobe.model.memory_kind import memory_kind
from memprobe.model.scenario import ScenarioSet, load_scenario_file


UPDATE_HELP = """Write a baseline file from fresh measurements or a saved run.

The file is deterministic (sorted keys, bytes as integers, no timestamps): identical numbers give an identical file, so the pull request's diff is the acknowledgement of a change. An existing file's thresholds and description are kept. With --scenario, only those scenarios are replaced and the others are kept.

Examples:

\b
memprobe baseline update --scenarios configs/scenarios/moe-stacks.toml -s tp4-ep2-lean --out my-baseline.json
memprobe baseline update --from results/h200x4-20261127/compare-tp4-ep2 --out my-baseline.json
memprobe baseline update --out my-baseline.json --device cpu   (an existing file: measures its own scenarios again)
memprobe baseline update --estimate --scenarios configs/scenarios/moe-stacks.toml --out my-baseline.json   (no GPU: estimated)

Exit codes: 0 written or unchanged, 2 bad input (nothing measured or written), 3 the measurement failed (the file is left as it was).
"""



# A command: long only by its Typer option declarations (one per line with its help); its body is short.
def update(
    out: Annotated[Path, typer.Option("--out", "-o", envvar="MEMPROBE_BASELINE_UPDATE_OUT", show_default=False,
                                      help="Baseline JSON file to write (kept thresholds if it exists).")],
    scenarios_file: Annotated[Optional[Path], typer.Option(
        "--scenarios", envvar="MEMPROBE_BASELINE_UPDATE_SCENARIOS", help="Scenario TOML file to measure.")] = None,
    from_dir: Annotated[Optional[Path], typer.Option(
        "--from", envvar="MEMPROBE_BASELINE_UPDATE_FROM",
        help="Take the numbers from this saved run or comparison folder (no GPU needed).")] = None,
    scenario: Annotated[Optional[list[str]], typer.Option(
        "--scenario", "-s", envvar="MEMPROBE_BASELINE_UPDATE_SCENARIO",
        help="Only this scenario (repeatable); the file's other scenarios are kept.")] = None,
    device: Annotated[str, typer.Option(
        "--device", envvar="MEMPROBE_DEVICE", help="cuda, or cpu (host RSS readings; for CPU-only baselines). Not used with --from.")] = "cuda",
    out_dir: Annotated[Path, typer.Option(
        "--out-dir", envvar="MEMPROBE_OUT_DIR", help="Folder that receives the run folders measured for the baseline. Not used with --from.")
    ] = DEFAULT_OUT_DIR,
    timeout: Annotated[float, typer.Option(
        "--timeout", envvar="MEMPROBE_TIMEOUT",
        help="The longest any rank may go without a new reading (counted from launch, or from its scenario's turn). Not used with --from.")
    ] = DEFAULT_TIMEOUT_S,
    estimate: bool = ESTIMATE, calibration: Optional[Path] = CALIBRATION,
    gpus_per_node: Annotated[Optional[int], typer.Option(
        "--gpus-per-node", envvar="MEMPROBE_BASELINE_UPDATE_GPUS_PER_NODE",
        help="With --estimate: GPUs per node (default: the world size, at most 8).")] = None,
    sglang: Annotated[str, typer.Option(
        "--sglang", envvar="MEMPROBE_BASELINE_UPDATE_SGLANG", metavar="SITE",
        help="The SGLang of scenarios with engine sglang: this site folder (default: the scenario's own, else "
             "the importable SGLang).")] = "",
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    try:
        existing = _validate_update(out, scenarios_file, from_dir)
        options = gate_launch_options(device, out_dir, timeout)
        wanted = list(dict.fromkeys(scenario or []))
        scenario_set: ScenarioSet | None = None
        comparison: Comparison | None = None
        if from_dir is not None:
            comparison = _restrict(load_comparison(from_dir), wanted, str(from_dir))
            refuse_other_kinds(existing, comparison, str(from_dir))
        elif scenarios_file is not None:
            loaded_set = load_scenario_file(scenarios_file)
            for name in wanted:
                loaded_set.get(name)
            scenario_set = _restrict_set(loaded_set, wanted)
        else:
            assert existing is not None
            scenario_set = existing.scenario_set(wanted or None)
        if estimate and from_dir is not None:
            raise UsageError("--estimate estimates the scenarios; --from takes saved runs: give one")
        if comparison is None and existing is not None:
            check_device_matches(existing, existing.names(), "estimate" if estimate else device)
        chosen = find_calibration(None, calibration) if estimate else None
        if sglang and scenario_set is not None:
            from memprobe.measure.sglang_install import check_site
            from memprobe.model.scenario import with_sglang

            scenario_set = with_sglang(scenario_set, check_site(sglang))
    except MemprobeError as error:
        raise _fail("baseline update", error) from None

    try:
        if comparison is None:
            assert scenario_set is not None
            if estimate:
                from memprobe.commands.estimate import estimated

                comparison = estimated(scenario_set, chosen, gpus_per_node, None, quiet=True)
            else:
                comparison = measure(scenario_set, options)
        document, notes = _new_document(comparison, existing, keep_others=bool(wanted))
        changes = _changes(existing.document if existing else None, document)
        changed = write_baseline(out, document)
    except MemprobeError as error:
        raise _fail("baseline update", error) from None
    for note in notes:
        typer.echo(f"memprobe baseline update: note: {note}", err=True)
    ranks = sum(len(s["ranks"]) for s in document["scenarios"].values())
    count = len(document["scenarios"])
    what = f"{count} scenario{'s' if count != 1 else ''}, {ranks} rank{'s' if ranks != 1 else ''}"
    if not changed:
        typer.echo(f"{out}: unchanged ({what})")
    elif existing is None:
        typer.echo(f"{out}: written ({what}); review and commit it")
    else:
        typer.echo(f"{out}: {'written' if existing is None else 'updated'} ({what}); {len(changes)} change(s)")
        for line in changes[:20]:
            typer.echo(f"  {line}")
        if len(changes) > 20:
            typer.echo(f"  ... and {len(changes) - 20} more (see the diff)")
    raise typer.Exit(0)



def _validate_update(out: Path, scenarios_file: Path | None, from_dir: Path | None) -> Baseline | None:
    if scenarios_file is not None and from_dir is not None:
        raise UsageError("give either --scenarios FILE or --from RUN_DIR, not both")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a .json file path")
    existing = load_baseline(out) if out.exists() else None
    if scenarios_file is None and from_dir is None and existing is None:
        raise UsageError(f"nothing to measure: {out} does not exist yet; give --scenarios FILE or --from RUN_DIR")
    if from_dir is not None and not from_dir.exists():
        raise UsageError(f"--from {from_dir} does not exist")
    check_output_path(out, "--out", missing_folders_allowed=True)
    return existing


def refuse_other_kinds(existing: Baseline | None, comparison: Comparison, source: str) -> None:
    """One kind of memory per baseline file: runs of two kinds, or of another kind than the file's, are refused."""
    kinds = {item.scenario.name: memory_kind(item.run) for item in comparison.runs}
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{name} {kind}" for name, kind in kinds.items())
        raise IncomparableError(f"{source} holds runs of several kinds of memory ({shown}); a baseline file holds one kind")
    if existing is not None:
        check_same_kind(existing, existing.names(), next(iter(kinds.values())), f"{source} holds")


def _restrict(comparison: Comparison, wanted: list[str], source: str) -> Comparison:
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


def _restrict_set(scenario_set: ScenarioSet, wanted: list[str]) -> ScenarioSet:
    if not wanted:
        return scenario_set
    scenarios = tuple(s for s in scenario_set.scenarios if s.name in wanted)
    return ScenarioSet(scenarios=scenarios, baseline=scenarios[0].name)


def _new_document(comparison: Comparison, existing: Baseline | None, keep_others: bool) -> tuple[dict[str, Any], list[str]]:
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


def _changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
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
                    lines.append(f"{name} rank {rank} {metric}: {_change(a.get(metric), b.get(metric))}")
    if old.get("thresholds") != new.get("thresholds"):
        lines.append("thresholds changed")
    return lines


def _change(old: int | None, new: int | None) -> str:
    """``1,142 MiB -> 1,190 MiB``; where both read alike in MiB, the exact difference in bytes too."""
    text = f"{mib_precise(old)} -> {mib_precise(new)}"
    if old is not None and new is not None and mib_precise(old) == mib_precise(new):
        text += f" ({new - old:+,} bytes)"
    return text

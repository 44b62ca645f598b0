"""``memprobe gate`` and ``memprobe baseline update``: Typer commands over :mod:`memprobe.gate`.

The commands only parse, validate and delegate. Measuring is not done here: :func:`register`
takes the function that runs scenarios (``run_scenarios(scenario_set, LaunchOptions) -> Comparison``),
so these commands work without GPUs when given saved results (``--results`` / ``--from``).

Every input is checked before anything runs or any file is written; a bad input exits 2
with one line on stderr. Exit codes are those of :class:`memprobe.errors.ExitCode`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from memprobe.baseline import (
    Baseline,
    ThresholdRule,
    build_baseline,
    check_metric_pattern,
    default_thresholds,
    load_baseline,
    metric_sort_key,
    write_baseline,
)
from memprobe.compare import load_comparison
from memprobe.config import DEFAULT_TIMEOUT_S, LaunchOptions
from memprobe.errors import ExitCode, MeasurementError, MemprobeError, UsageError
from memprobe.gate import (
    GateResult,
    append_step_summary,
    check_overrides,
    failed_result,
    format_mib,
    judge,
    parse_relative,
    parse_size,
    parse_threshold_spec,
    render_lines,
    render_table,
    write_json,
    write_junit_xml,
    write_markdown,
)
from memprobe.output_paths import check_output_path
from memprobe.scenarios import Comparison, ScenarioSet, load_scenario_file


#: ``run_scenarios(scenario_set, options: LaunchOptions) -> Comparison`` (memprobe.compare.run_scenarios).
#: It raises MeasurementError when a run fails (the gate then reports every case as missing,
#: exit 3), or returns a comparison whose incomplete runs the gate reports as missing.
Runner = Callable[[ScenarioSet, LaunchOptions], Comparison]


def launch_options(device: str, out_dir: Path, timeout: float) -> LaunchOptions:
    """The launch options the gate and baseline update measure with (validated: UsageError)."""
    return LaunchOptions(device=device, out_dir=out_dir, timeout_s=timeout)


def _fail(command: str, error: MemprobeError) -> typer.Exit:
    typer.echo(f"memprobe {command}: error: {error}", err=True)
    return typer.Exit(int(error.exit_code))


def _load_results(path: Path) -> Comparison:
    """Saved results for the gate. A path that is a file is a usage error (2); no or broken results
    are a measurement problem (3): the step that should have produced them failed."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--results {path} is a file; give a run folder or a comparison folder")
    if not path.exists():
        raise MeasurementError(f"no results at {path} (did the measurement step run?)")
    try:
        return load_comparison(path)
    except UsageError as error:
        raise MeasurementError(f"results {path}: {error}") from None


def _cli_overrides(relative: str | None, absolute: str | None, specs: list[str] | None) -> list[ThresholdRule]:
    rules: list[ThresholdRule] = []
    if relative is not None or absolute is not None:
        rules.append(ThresholdRule(
            relative=parse_relative(relative, "--relative") if relative is not None else None,
            absolute_bytes=parse_size(absolute, "--absolute") if absolute is not None else None,
            source="command line",
        ))
    rules.extend(parse_threshold_spec(spec) for spec in specs or [])
    return rules


def _write_reports(result: GateResult, markdown: Path | None, junit_xml: Path | None, json_path: Path | None) -> list[str]:
    problems: list[str] = []
    targets: list[tuple[str, Any, Any]] = [
        ("--markdown", markdown, write_markdown),
        ("--junit-xml", junit_xml, write_junit_xml),
        ("--json", json_path, write_json),
    ]
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        targets.append(("GITHUB_STEP_SUMMARY", Path(summary), append_step_summary))
    for option, path, writer in targets:
        if path is None:
            continue
        try:
            writer(result, path)
        except OSError as error:
            problems.append(f"{option} {path}: {error.strerror or error}")
    return problems


GATE_HELP = """Judge GPU memory against a baseline kept in git; exit 1 on a regression.

Runs the baseline's scenarios (or, with --results, judges a saved run without GPUs) and compares every rank's bytes per group and step. A metric regresses when it grows by more than BOTH the relative and the absolute threshold (default +5% and +64 MiB); thresholds can be set per metric, group or scenario in the baseline file, or here.

Exit codes: 0 pass, 1 regression, 2 usage or configuration error, 3 measurement or launch failure, 4 environment differs from the baseline's key (GPU, driver, CUDA, torch, NCCL and its settings, NVML sampling mode, memprobe version).

Examples:

memprobe gate --baseline configs/baselines/h100x4.json --junit-xml gate.xml

memprobe gate --baseline configs/baselines/h100x4.json --results runs/2026-11-27-1200

memprobe gate --baseline b.json --results runs/x --threshold metric=moe_*/pynccl,relative=2%,absolute=16MiB

memprobe gate --baseline b.json --results runs/x --threshold scenario=tp4,metric=total_after_first_use,max=3GiB
"""

UPDATE_HELP = """Write a baseline file from fresh measurements or a saved run.

The file is deterministic (sorted keys, bytes as integers, no timestamps): identical numbers give an identical file, so the pull request's diff is the acknowledgement of a change. An existing file's thresholds and description are kept. With --scenario, only those scenarios are replaced and the others are kept.

Examples:

memprobe baseline update --scenarios configs/headline.toml --out configs/baselines/h100x4.json

memprobe baseline update --from runs/2026-11-27-1200 --out configs/baselines/h100x4.json

memprobe baseline update --out configs/baselines/h100x4.json  (measures the file's own scenarios again)
"""


def register(app: typer.Typer, run_scenarios_callable: Runner | None = None) -> typer.Typer:
    """Add ``gate`` and ``baseline update`` to ``app``; returns the ``baseline`` sub-app.

    Args:
        app: the memprobe Typer app.
        run_scenarios_callable: :func:`memprobe.compare.run_scenarios` or anything with its
            signature ``(scenario_set, LaunchOptions) -> Comparison``; ``None`` allows only
            ``--results`` / ``--from``.
    """
    baseline_app = typer.Typer(help="Make and refresh baseline files for `memprobe gate`.", no_args_is_help=True)
    app.add_typer(baseline_app, name="baseline")

    def measure(scenario_set: ScenarioSet, options: LaunchOptions, hint: str) -> Comparison:
        if run_scenarios_callable is None:
            raise UsageError(f"this memprobe cannot run scenarios here; {hint}")
        import inspect

        from memprobe.progress import Progress

        if "progress" not in inspect.signature(run_scenarios_callable).parameters:
            return run_scenarios_callable(scenario_set, options)
        with Progress() as progress:  # on stderr: a bar on a terminal, sparse lines in CI logs
            return run_scenarios_callable(scenario_set, options, progress=progress)

    @app.command("gate", help=GATE_HELP, no_args_is_help=True)
    def gate_command(
        baseline: Annotated[Path, typer.Option("--baseline", "-b", envvar="MEMPROBE_BASELINE", show_default=False,
                                               help="Baseline JSON file (made by `memprobe baseline update`).")],
        results: Annotated[Optional[Path], typer.Option(
            "--results", envvar="MEMPROBE_RESULTS",
            help="Judge this saved run or comparison folder instead of measuring (no GPU needed).")] = None,
        scenario: Annotated[Optional[list[str]], typer.Option(
            "--scenario", "-s", envvar="MEMPROBE_SCENARIO",
            help="Judge only this baseline scenario (repeatable).")] = None,
        relative: Annotated[Optional[str], typer.Option(
            "--relative", envvar="MEMPROBE_GATE_RELATIVE",
            help="Relative threshold for every metric, e.g. 5% or 0.05; overrides the baseline file.")] = None,
        absolute: Annotated[Optional[str], typer.Option(
            "--absolute", envvar="MEMPROBE_GATE_ABSOLUTE",
            help="Absolute threshold for every metric, e.g. 64MiB; overrides the baseline file.")] = None,
        threshold: Annotated[Optional[list[str]], typer.Option(
            "--threshold", "-t", envvar="MEMPROBE_GATE_THRESHOLD",
            help="Comma-separated KEY=VALUE: optional scenario=NAME and metric=GLOB, then relative=P, absolute=SIZE, "
                 "max=SIZE (a cap) or ignore=true. Repeatable; wins over the baseline file.")] = None,
        allow_env_mismatch: Annotated[bool, typer.Option(
            "--allow-env-mismatch", envvar="MEMPROBE_ALLOW_ENV_MISMATCH",
            help="Compare even where the environment differs from the baseline's key (and say so) instead of exit 4.")] = False,
        markdown: Annotated[Optional[Path], typer.Option(
            "--markdown", envvar="MEMPROBE_GATE_MARKDOWN",
            help="Write the verdict as Markdown here (also appended to $GITHUB_STEP_SUMMARY when set).")] = None,
        junit_xml: Annotated[Optional[Path], typer.Option(
            "--junit-xml", envvar="MEMPROBE_GATE_JUNIT_XML",
            help="Write JUnit XML here: one test case per scenario and rank.")] = None,
        json_path: Annotated[Optional[Path], typer.Option(
            "--json", envvar="MEMPROBE_GATE_JSON", help="Write the verdict as JSON here.")] = None,
        device: Annotated[str, typer.Option(
            "--device", envvar="MEMPROBE_DEVICE",
            help="cuda, or cpu (host RSS; only comparable with a baseline made with --device cpu). "
                 "Ignored with --results.")] = "cuda",
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", envvar="MEMPROBE_OUT_DIR",
            help="Folder that receives the run folders the gate measures (ignored with --results).")] = Path("results"),
        timeout: Annotated[float, typer.Option(
            "--timeout", envvar="MEMPROBE_TIMEOUT",
            help="Seconds before a run that stopped progressing is killed.")] = DEFAULT_TIMEOUT_S,
    ) -> None:
        try:
            loaded = load_baseline(baseline)
            selected = loaded.select(scenario)
            overrides = _cli_overrides(relative, absolute, threshold)
            check_overrides(loaded, overrides)
            taken = {baseline.resolve(): "--baseline"}
            for option, path in (("--markdown", markdown), ("--junit-xml", junit_xml), ("--json", json_path)):
                check_output_path(path, option, missing_folders_allowed=True, taken=taken)
            if results is None and run_scenarios_callable is None:
                raise UsageError("this memprobe cannot run scenarios here; pass --results RUN_DIR")
            options = launch_options(device, out_dir, timeout)
        except MemprobeError as error:
            raise _fail("gate", error) from None

        try:
            if results is not None:
                comparison = _load_results(results)
            else:
                comparison = measure(loaded.scenario_set(selected), options, "pass --results RUN_DIR")
            result = judge(loaded, comparison, thresholds_override=overrides, allow_env_mismatch=allow_env_mismatch,
                           scenarios=selected, results_source=str(results) if results is not None else None)
        except UsageError as error:
            raise _fail("gate", error) from None
        except MeasurementError as error:
            result = failed_result(loaded, str(error), selected, allow_env_mismatch)
        except MemprobeError as error:  # interrupted: nothing judged, nothing written
            raise _fail("gate", error) from None

        problems = _write_reports(result, markdown, junit_xml, json_path)
        render_table(result, sys.stdout)
        render_lines(result, sys.stdout)
        code = int(result.exit_code)
        for problem in problems:
            typer.echo(f"memprobe gate: error: could not write {problem}", err=True)
        if problems and code == ExitCode.OK:
            code = int(ExitCode.USAGE)
        raise typer.Exit(code)

    @baseline_app.command("update", help=UPDATE_HELP, no_args_is_help=True)
    def update_command(
        out: Annotated[Path, typer.Option("--out", "-o", envvar="MEMPROBE_BASELINE", show_default=False,
                                          help="Baseline JSON file to write (kept thresholds if it exists).")],
        scenarios_file: Annotated[Optional[Path], typer.Option(
            "--scenarios", envvar="MEMPROBE_SCENARIOS", help="Scenario TOML file to measure.")] = None,
        from_dir: Annotated[Optional[Path], typer.Option(
            "--from", envvar="MEMPROBE_BASELINE_FROM",
            help="Take the numbers from this saved run or comparison folder (no GPU needed).")] = None,
        scenario: Annotated[Optional[list[str]], typer.Option(
            "--scenario", "-s", envvar="MEMPROBE_SCENARIO",
            help="Only this scenario (repeatable); the file's other scenarios are kept.")] = None,
        device: Annotated[str, typer.Option(
            "--device", envvar="MEMPROBE_DEVICE", help="cuda, or cpu (host RSS readings; for CPU-only baselines).")] = "cuda",
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", envvar="MEMPROBE_OUT_DIR", help="Folder that receives the run folders measured for the baseline.")
        ] = Path("results"),
        timeout: Annotated[float, typer.Option(
            "--timeout", envvar="MEMPROBE_TIMEOUT", help="Seconds before a run that stopped progressing is killed.")
        ] = DEFAULT_TIMEOUT_S,
    ) -> None:
        try:
            existing = _validate_update(out, scenarios_file, from_dir)
            options = launch_options(device, out_dir, timeout)
            wanted = list(dict.fromkeys(scenario or []))
            scenario_set: ScenarioSet | None = None
            comparison: Comparison | None = None
            if from_dir is not None:
                comparison = _restrict(load_comparison(from_dir), wanted, str(from_dir))
            elif scenarios_file is not None:
                loaded_set = load_scenario_file(scenarios_file)
                for name in wanted:
                    loaded_set.get(name)
                scenario_set = _restrict_set(loaded_set, wanted)
            else:
                assert existing is not None
                scenario_set = existing.scenario_set(wanted or None)
            if comparison is None and run_scenarios_callable is None:
                raise UsageError("this memprobe cannot run scenarios here; pass --from RUN_DIR")
        except MemprobeError as error:
            raise _fail("baseline update", error) from None

        try:
            if comparison is None:
                assert scenario_set is not None
                comparison = measure(scenario_set, options, "pass --from RUN_DIR")
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

    return baseline_app


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


def _restrict(comparison: Comparison, wanted: list[str], source: str) -> Comparison:
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
                    show = lambda v: "-" if v is None else format_mib(v)  # noqa: E731
                    lines.append(f"{name} rank {rank} {metric}: {show(a.get(metric))} -> {show(b.get(metric))}")
    if old.get("thresholds") != new.get("thresholds"):
        lines.append("thresholds changed")
    return lines

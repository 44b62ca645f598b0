"""``memprobe gate``: judge GPU memory against a baseline kept in git (exit 1 on a regression).

It only parses, validates and delegates to :mod:`memprobe.gate`; with ``--results`` it judges saved
results without GPUs. Every input is checked before anything runs or any file is written; a bad
input exits 2 with one line on stderr. Exit codes are those of :class:`memprobe.errors.ExitCode`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from memprobe.commands.common import (
    DEFAULT_OUT_DIR, MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK, QUIET, RDZV_BACKEND, RDZV_ENDPOINT, RDZV_ID, VERBOSE, measure,
    gathered_elsewhere,
)
from memprobe.commands.paths import check_output_path
from memprobe.errors import DamagedInput, ExitCode, IncomparableError, MeasurementError, MemprobeError, UsageError
from memprobe.gate.baseline import Baseline, ThresholdRule, check_same_kind, load_baseline
from memprobe.gate.judge import GateResult, failed_result, judge
from memprobe.gate.render import (
    append_to_step_summary,
    render_lines,
    render_table,
    write_json,
    write_junit_xml,
    write_markdown,
)
from memprobe.gate.thresholds import check_overrides, parse_relative, parse_size, parse_threshold_spec
from memprobe.launch.options import DEFAULT_TIMEOUT_S, LaunchOptions
from memprobe.model.comparison import Comparison, load_comparison
from memprobe.model.memory_kind import ESTIMATED_GPU, KIND_OF_DEVICE, memory_kind


def gate_launch_options(device: str, out_dir: Path, timeout: float, **nodes: Any) -> LaunchOptions:
    """The launch options the gate and baseline update measure with (validated: UsageError);
    ``nodes``: nnodes, node_rank, master_addr, master_port and rdzv_* for a multi-node gate."""
    return LaunchOptions(device=device, out_dir=out_dir, timeout_s=timeout, **nodes)


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
    except DamagedInput:  # a file that contradicts itself is bad input, never a verdict
        raise
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
    for option, path, writer in targets:
        if path is None:
            continue
        try:
            writer(result, path)
        except OSError as error:
            problems.append(f"{option} {path}: {error.strerror or error}")
    try:
        append_to_step_summary(result)
    except OSError as error:
        problems.append(f"$GITHUB_STEP_SUMMARY: {error.strerror or error}")
    return problems


def check_device_matches(baseline: Baseline, selected: list[str], device: str) -> None:
    """A baseline of GPU memory cannot judge host memory, nor an estimate a measurement: say so before measuring.
    ``device`` "estimate" stands for ``--estimate``."""
    if device == "estimate":
        check_same_kind(baseline, selected, ESTIMATED_GPU, "--estimate makes")
        return
    check_same_kind(baseline, selected, KIND_OF_DEVICE.get(device, device), f"measuring with --device {device} reads")


ESTIMATE = typer.Option(False, "--estimate", envvar="MEMPROBE_ESTIMATE",
                        help="Estimate (memprobe estimate: NCCL's rules and a calibration, no GPU) instead of measuring. "
                             "Only an estimated baseline is judged against an estimate, never a measured one (exit 4).")
CALIBRATION = typer.Option(None, "--calibration", envvar="MEMPROBE_CALIBRATION",
                           help="With --estimate: a calibration file from memprobe calibrate (default: the packaged one "
                                "for the baseline's GPU model).")


def _calibration(baseline: Baseline, selected: list[str], path: Optional[Path]) -> Any:
    from memprobe.estimate.calibration import find_calibration

    models = {baseline.scenarios[name].environment_key.get("gpu_model") for name in selected}
    return find_calibration(None if path else next(iter(models)), path)


def _estimated(baseline: Baseline, selected: list[str], scenario_set: Any, calibration: Any) -> Comparison:
    """The baseline's scenarios estimated on the topology the baseline recorded (GPUs per node, nodes)."""
    from memprobe.commands.estimate import estimated

    keys = [baseline.scenarios[name].environment_key for name in selected]
    gpus = {key.get("gpu_count") for key in keys}
    nodes = {key.get("nnodes") for key in keys}
    if len(gpus) > 1 or len(nodes) > 1:
        raise UsageError(f"the selected baseline scenarios were estimated on different nodes ({sorted(map(str, gpus))} GPUs "
                         f"per node); gate them one at a time with --scenario")
    return estimated(scenario_set, calibration, gpus.pop(), nodes.pop(), quiet=True)


def check_results_match(baseline: Baseline, selected: list[str], comparison: Comparison, source: Path) -> None:
    """Every run of the results holds the baseline's kind of memory, whether or not its name is in the baseline:
    results of another kind are refused, not reported as missing scenarios."""
    for name in selected:
        if name in comparison.names():
            check_same_kind(baseline, [name], memory_kind(comparison.get(name).run), f"the results in {source} hold")
    for item in comparison.runs:
        check_same_kind(baseline, selected, memory_kind(item.run), f"the results in {source} ({item.scenario.name}) hold")


GATE_HELP = """Judge GPU memory against a baseline kept in git; exit 1 on a regression.

Runs the baseline's scenarios (or, with --results, judges a saved run without GPUs) and compares every rank's bytes per group and step. A metric regresses when it grows by more than BOTH the relative and the absolute threshold (default +5% and +64 MiB); thresholds can be set per metric, group or scenario in the baseline file, or here.

Exit codes: 0 pass, 1 regression, 2 usage or configuration error, 3 measurement or launch failure, 4 environment differs from the baseline's key (GPU, driver, CUDA, torch, NCCL and its settings, NVML sampling mode, memprobe version), the scenario's definition changed, or the baseline holds another kind of memory (GPU against host RSS, or an estimate against a measurement: never judged, not even with --allow-env-mismatch).

Examples:

\b
memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json --junit-xml gate.xml
memprobe gate --estimate --baseline configs/baselines/estimated-h200x8-tp8-ep4-lean.json   (no GPU: an estimated baseline)
memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json --results results/h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean
memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json --results results/h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean --threshold metric=moe_*/first_use,relative=2%,absolute=16MiB
memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json --results results/h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean --threshold scenario=tp4-ep2-lean,metric=total_after_first_use,max=4GiB
"""


# A command: long only by its Typer option declarations (one per line with its help); its body is short.
def gate(
    baseline: Annotated[Path, typer.Option("--baseline", "-b", envvar="MEMPROBE_GATE_BASELINE", show_default=False,
                                           help="Baseline JSON file (made by `memprobe baseline update`).")],
    results: Annotated[Optional[Path], typer.Option(
        "--results", envvar="MEMPROBE_GATE_RESULTS",
        help="Judge this saved run or comparison folder instead of measuring (no GPU needed).")] = None,
    scenario: Annotated[Optional[list[str]], typer.Option(
        "--scenario", "-s", envvar="MEMPROBE_GATE_SCENARIO",
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
        "--allow-env-mismatch", envvar="MEMPROBE_GATE_ALLOW_ENV_MISMATCH",
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
        help="cuda, or cpu (host RSS; only judged against a baseline made with --device cpu, never a GPU one). "
             "Ignored with --results.")] = "cuda",
    out_dir: Annotated[Path, typer.Option(
        "--out-dir", envvar="MEMPROBE_OUT_DIR",
        help="Folder that receives the run folders the gate measures (ignored with --results).")] = DEFAULT_OUT_DIR,
    timeout: Annotated[float, typer.Option(
        "--timeout", envvar="MEMPROBE_TIMEOUT",
        help="The longest any rank may go without a new reading (counted from launch, or from its scenario's turn).")] = DEFAULT_TIMEOUT_S,
    sglang: Annotated[str, typer.Option(
        "--sglang", envvar="MEMPROBE_GATE_SGLANG", metavar="SITE",
        help="The SGLang under test for baseline scenarios recorded with --engine sglang: this site folder "
             "(default: the importable SGLang). The verdict names both SGLangs.")] = "",
    nnodes: int = NNODES, node_rank: int = NODE_RANK, master_addr: str = MASTER_ADDR, master_port: Optional[int] = MASTER_PORT,
    rdzv_backend: str = RDZV_BACKEND, rdzv_endpoint: Optional[str] = RDZV_ENDPOINT, rdzv_id: Optional[str] = RDZV_ID,
    estimate: bool = ESTIMATE, calibration: Optional[Path] = CALIBRATION,
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> None:
    try:
        loaded = load_baseline(baseline)
        selected = loaded.select(scenario)
        overrides = _cli_overrides(relative, absolute, threshold)
        check_overrides(loaded, overrides)
        taken = {baseline.resolve(): "--baseline"}
        for option, path in (("--markdown", markdown), ("--junit-xml", junit_xml), ("--json", json_path)):
            check_output_path(path, option, missing_folders_allowed=True, taken=taken)
        options = gate_launch_options(device, out_dir, timeout, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                                      master_port=master_port, rdzv_backend=rdzv_backend, rdzv_endpoint=rdzv_endpoint,
                                      rdzv_id=rdzv_id)
        if sglang:
            from memprobe.measure.sglang_install import check_site

            sglang = check_site(sglang)
        if estimate and results is not None:
            raise UsageError("--estimate estimates the baseline's scenarios again; --results judges saved runs: give one")
        chosen = _calibration(loaded, selected, calibration) if estimate else None
        if results is None:
            check_device_matches(loaded, selected, "estimate" if estimate else device)
        from memprobe.verbosity import detail

        detail(f"memprobe gate: judging {', '.join(selected)} of {baseline} "
               f"({'results in ' + str(results) if results is not None else ('estimated now' if estimate else 'measured now')})")
    except MemprobeError as error:
        raise _fail("gate", error) from None

    try:
        if results is not None:
            comparison = _load_results(results)
            check_results_match(loaded, selected, comparison, results)
        else:
            from memprobe.model.scenario import with_sglang

            scenario_set = with_sglang(loaded.scenario_set(selected), sglang)
            if estimate:
                comparison = _estimated(loaded, selected, scenario_set, chosen)
            else:
                comparison = measure(scenario_set, options)
            if gathered_elsewhere([(item.scenario.name, item.run) for item in comparison.runs]):  # node 0 judges
                raise typer.Exit(int(ExitCode.OK))
        result = judge(loaded, comparison, thresholds_override=overrides, allow_env_mismatch=allow_env_mismatch,
                       scenarios=selected, results_source=str(results) if results is not None else None)
    except (UsageError, IncomparableError) as error:
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

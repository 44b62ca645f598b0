"""judge and make_baseline: a gate's verdict against a baseline file, and the baseline file itself."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from memprobe.api.measuring import gathered_elsewhere, measure
from memprobe.api.options import BaselineOptions, GateOptions, options_of
from memprobe.api.planning import estimated
from memprobe.api.results import BaselineUpdate
from memprobe.api.scenarios import checked_sites, repointed
from memprobe.errors import EngineNotInstalled, MeasurementError, UsageError

if TYPE_CHECKING:
    from memprobe.estimate.calibration import Calibration
    from memprobe.gate.baseline import Baseline
    from memprobe.gate.judge import GateResult
    from memprobe.model.comparison import Comparison
    from memprobe.model.scenario import ScenarioSet

__all__ = ["judge", "make_baseline"]


# ------------------------------------------------------------------------------------------- gate


def judge(options: Optional[GateOptions] = None, **fields_: Any) -> "Optional[GateResult]":
    """A gate's verdict: the baseline's scenarios measured now (or estimated, or ``results`` judged: a run or
    comparison folder, or a :class:`Comparison`) against the baseline file, per rank, group and step.

    The result's ``exit_code`` is the gate's (0 pass, 1 regression, 3 the measurement failed, 4 incomparable)
    and ``findings`` what it found. Bad input raises UsageError; another kind of memory, IncomparableError.
    None on a node other than 0 of a multi-node measurement: node 0 gathered the readings and judges them.

    >>> verdict = judge(baseline="configs/baselines/h200x4-tp4-ep2-lean.json",
    ...                 results="results/h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean")
    >>> int(verdict.exit_code), verdict.headline()
    (0, 'memprobe gate: PASS, 1 scenario within limits (exit 0)')
    """
    from memprobe.gate.baseline import load_baseline
    from memprobe.gate.judge import failed_result, judge as judged
    from memprobe.gate.thresholds import check_overrides
    from memprobe.verbosity import detail

    conf = options_of(GateOptions, options, fields_)
    _refuse_missing_baseline(conf)
    baseline = load_baseline(conf.baseline)
    selected = baseline.select(list(conf.scenarios) or None)
    overrides = threshold_overrides(conf.relative, conf.absolute, conf.thresholds)
    check_overrides(baseline, overrides)
    sites = checked_sites(sglang=conf.sglang, vllm=conf.vllm)
    if conf.estimate and conf.results is not None:
        raise UsageError("--estimate estimates the baseline's scenarios again; --results judges saved runs: give one")
    _refuse_device_with_estimate(conf.estimate, conf.launch.device)
    calibration = _baseline_calibration(baseline, selected, conf.calibration) if conf.estimate else None
    if conf.results is None:
        check_device_matches(baseline, selected, "estimate" if conf.estimate else conf.launch.device)
    detail(f"memprobe gate: judging {', '.join(selected)} of {conf.baseline} "
           f"({'results in ' + _named(conf.results) if conf.results is not None else ('estimated now' if conf.estimate else 'measured now')})")
    try:
        comparison = _gate_comparison(conf, baseline, selected, sites, calibration)
        if comparison is None:
            return None
        verdict = judged(baseline, comparison, thresholds_override=overrides, allow_env_mismatch=conf.allow_env_mismatch,
                         scenarios=selected, results_source=_source(conf.results) if conf.results is not None else None)
    except MeasurementError as error:
        verdict = failed_result(baseline, str(error), selected, conf.allow_env_mismatch)
    return _with_guards(verdict, conf, baseline, selected, sites)


def _refuse_missing_baseline(conf: GateOptions) -> None:
    """A baseline that is not there: one line naming the ``baseline update`` that makes it for this gate (the same
    --estimate, --sglang, --device, --calibration and scenarios; --from its results where it judges saved ones)."""
    from memprobe.gate.guards import quoted, update_arguments

    path = Path(conf.baseline)
    if path.exists() or path.is_symlink():
        return
    judged = conf.results if isinstance(conf.results, (str, Path)) else None
    source = ["--from", str(judged)] if judged is not None else ["--scenarios", "FILE"]
    sites = {"sglang": str(conf.sglang or ""), "vllm": str(conf.vllm or "")}  # as given: the baseline is not there
    arguments = update_arguments(estimate=conf.estimate, sites=sites, scenarios=conf.scenarios, device=conf.launch.device,
                                 calibration=conf.calibration, gpus_per_node=None, from_results=judged is not None)
    command = quoted(["memprobe", "baseline", "update", "--out", str(path), *source, *arguments])
    raise UsageError(f"baseline {path} does not exist (make one with: {command})")


def _under_test(scenario_set: "ScenarioSet", sites: dict[str, str]) -> "ScenarioSet":
    """The baseline's installed-engine scenarios re-pointed at the installations under test ("": the importable one,
    not the folder a baseline recorded: the gate judges what is installed here)."""
    from memprobe.model.scenario import with_site

    for name, site in sites.items():
        scenario_set = with_site(scenario_set, name, site)
    return scenario_set


def _with_guards(verdict: "GateResult", conf: GateOptions, baseline: "Baseline", selected: list[str],
                 sites: dict[str, str]) -> "GateResult":
    """The verdict says whose code it guards, and its update command records the same scenarios the same way."""
    from memprobe.gate.guards import guards, update_arguments

    judged = _under_test(baseline.scenario_set(selected), sites)
    verdict.guards = guards(judged.scenarios)
    verdict.notes.insert(0, f"this verdict guards {verdict.guards}")
    gpus = {baseline.scenarios[name].environment_key.get("gpu_count") for name in selected}
    verdict.update_arguments = update_arguments(
        estimate=conf.estimate, sites=sites, scenarios=list(conf.scenarios), device=conf.launch.device,
        calibration=conf.calibration, gpus_per_node=gpus.pop() if conf.estimate and len(gpus) == 1 else None,
        from_results=verdict.results_source is not None)
    return verdict


def _gate_comparison(conf: GateOptions, baseline: "Baseline", selected: list[str], sites: dict[str, str],
                     calibration: Any) -> "Optional[Comparison]":
    """What the gate judges; None where another node gathered the measurement (that node judges)."""
    if conf.results is not None:
        comparison = _load_results(conf.results) if isinstance(conf.results, Path) else conf.results
        check_results_match(baseline, selected, comparison, _named(conf.results))
        return comparison
    scenario_set = _under_test(baseline.scenario_set(selected), sites)
    try:
        if conf.estimate:
            return _estimated_as_recorded(baseline, selected, scenario_set, calibration, conf)
        comparison = measure(scenario_set, conf.launch)
    except EngineNotInstalled as error:
        raise _baseline_asks_for(scenario_set, error, sites) from error
    if gathered_elsewhere(comparison.runs):
        return None
    return comparison


def _baseline_asks_for(scenario_set: "ScenarioSet", error: EngineNotInstalled, sites: dict[str, str]) -> UsageError:
    """The engine's "--engine X needs X installed" said as the gate's user sees it: no --engine was given, the
    baseline's scenarios asked for the installed engine, and the gate's --<engine> SITE gives it."""
    asking = [s for s in scenario_set.scenarios if s.engine_ref.installed and s.engine_ref.engine.name == error.engine]
    if not asking or sites.get(error.engine):
        return error
    label = asking[0].engine_ref.engine.label
    names = ", ".join(s.name for s in asking)
    return UsageError(f"the baseline's scenario{'s' if len(asking) > 1 else ''} {names} "
                      f"{'ask' if len(asking) > 1 else 'asks'} for the installed {label} (engine {asking[0].engine}), "
                      f"which this Python does not import: --{error.engine} SITE gives it, a site folder "
                      f"(make one with: {error.install} --target SITE)")


def _source(results: "Path | Comparison") -> Optional[str]:
    """The folder the results were read from; None for a comparison that has none (an estimate made in memory)."""
    folder = results if isinstance(results, Path) else results.path
    return str(folder) if folder is not None else None


def _named(results: "Path | Comparison") -> str:
    """The results as messages name them."""
    if isinstance(results, Path) or results.path is not None:
        return str(_source(results))
    return f"the comparison {results.comparison_id} given to judge"


def threshold_overrides(relative: Optional[str], absolute: Optional[str], specs: Sequence[str]) -> list[Any]:
    """--relative, --absolute and --threshold as rules that win over the baseline file's."""
    from memprobe.gate.baseline import ThresholdRule
    from memprobe.gate.thresholds import parse_relative, parse_size, parse_threshold_spec

    rules: list[Any] = []
    if relative is not None or absolute is not None:
        rules.append(ThresholdRule(
            relative=parse_relative(relative, "--relative") if relative is not None else None,
            absolute_bytes=parse_size(absolute, "--absolute") if absolute is not None else None,
            source="command line",
        ))
    rules.extend(parse_threshold_spec(spec) for spec in specs)
    return rules


def _load_results(path: Path) -> "Comparison":
    """Saved results for the gate: a folder or a comparison's JSON export. Any other file is a usage error (2); no
    or broken results are a measurement problem (3): the step that should have produced them failed."""
    from memprobe.errors import DamagedInput
    from memprobe.model.comparison import load_comparison

    if path.exists() and not path.is_dir() and path.suffix != ".json":
        raise UsageError(f"--results {path} is a file; give a run folder, a comparison folder or a --json export")
    if not path.exists():
        raise MeasurementError(f"no results at {path} (did the measurement step run?)")
    try:
        return load_comparison(path)
    except DamagedInput:  # a file that contradicts itself is bad input, never a verdict
        raise
    except UsageError as error:
        raise MeasurementError(f"results {path}: {error}") from None


def _refuse_device_with_estimate(estimate: bool, device: str) -> None:
    """--estimate makes GPU memory from NCCL's rules; --device cpu would ask for host memory measured: never both."""
    if estimate and device != "cuda":
        raise UsageError(f"--estimate estimates GPU memory; --device {device} measures another kind: give one")


def check_device_matches(baseline: "Baseline", selected: list[str], device: str) -> None:
    """A baseline of GPU memory cannot judge host memory, nor an estimate a measurement: say so before measuring.
    ``device`` "estimate" stands for ``--estimate``."""
    from memprobe.gate.baseline import check_same_kind
    from memprobe.model.memory_kind import ESTIMATED_GPU, KIND_OF_DEVICE

    if device == "estimate":
        check_same_kind(baseline, selected, ESTIMATED_GPU, "--estimate makes")
        return
    check_same_kind(baseline, selected, KIND_OF_DEVICE.get(device, device), f"measuring with --device {device} reads")


def check_results_match(baseline: "Baseline", selected: list[str], comparison: "Comparison", source: str) -> None:
    """Every run of the results holds the baseline's kind of memory, whether or not its name is in the baseline:
    results of another kind are refused, not reported as missing scenarios."""
    from memprobe.gate.baseline import check_same_kind
    from memprobe.model.memory_kind import memory_kind

    for name in selected:
        if name in comparison.names():
            check_same_kind(baseline, [name], memory_kind(comparison.get(name).run), f"the results in {source} hold")
    for item in comparison.runs:
        check_same_kind(baseline, selected, memory_kind(item.run), f"the results in {source} ({item.scenario.name}) hold")


def _baseline_calibration(baseline: "Baseline", selected: list[str], path: Optional[Path]) -> "Calibration":
    from memprobe.estimate.calibration import find_calibration

    models = {baseline.scenarios[name].environment_key.get("gpu_model") for name in selected}
    return find_calibration(None if path else next(iter(models)), path)


def _estimated_as_recorded(baseline: "Baseline", selected: list[str], scenario_set: "ScenarioSet",
                           calibration: "Calibration", conf: GateOptions) -> "Comparison":
    """The baseline's scenarios estimated on the topology the baseline recorded (GPUs per node, nodes) and with the
    rules of the NCCL it recorded (``--nccl`` chooses others)."""
    keys = [baseline.scenarios[name].environment_key for name in selected]
    gpus = {key.get("gpu_count") for key in keys}
    nodes = {key.get("nnodes") for key in keys}
    if len(gpus) > 1 or len(nodes) > 1:
        raise UsageError(f"the selected baseline scenarios were estimated on different nodes ({sorted(map(str, gpus))} GPUs "
                         f"per node); gate them one at a time with --scenario")
    recorded = {key.get("nccl") for key in keys}
    # the baseline's NCCL rules, unless --nccl says otherwise: the installed torch's NCCL is not what the gate judges
    nccl = conf.nccl if conf.nccl is not None or len(recorded) != 1 else recorded.pop()
    return estimated(scenario_set, calibration, gpus.pop(), nodes.pop(), timeout_s=conf.launch.timeout_s, nccl=nccl,
                     network=conf.network, nic_gbps=conf.nic_gbps)


# ------------------------------------------------------------------------------------------- baseline


def make_baseline(options: Optional[BaselineOptions] = None, **fields_: Any) -> BaselineUpdate:
    """Write (or refresh) a baseline file from fresh measurements, estimates or saved runs (``from_dir``).

    The file is deterministic: identical numbers give an identical file. An existing file's thresholds and
    description are kept; with ``scenarios``, only those are replaced. Measured with ``launch`` (default cuda).

    >>> update = make_baseline(out=tmp_path / "b.json", from_dir="results/h200x4-20261127/compare-tp4-ep2")
    >>> update.created, update.changed
    (True, True)
    """
    from memprobe.gate.baseline import baseline_lock, load_baseline, write_baseline
    from memprobe.gate.update import changes, new_document

    conf = options_of(BaselineOptions, options, fields_)
    existing, comparison, scenario_set, calibration = _baseline_inputs(conf)
    if comparison is None:
        assert scenario_set is not None
        if conf.estimate:
            comparison = estimated(scenario_set, calibration, conf.gpus_per_node, None, timeout_s=conf.launch.timeout_s,
                                   nccl=conf.nccl, network=conf.network, nic_gbps=conf.nic_gbps)
        else:
            comparison = measure(scenario_set, conf.launch)
    with baseline_lock(conf.out):  # another update of this file may have written it since: merge with what it holds now
        existing = load_baseline(conf.out) if conf.out.exists() else None
        document, notes = new_document(comparison, existing, keep_others=bool(conf.scenarios))
        changed_lines = changes(existing.document if existing else None, document)
        changed = write_baseline(conf.out, document)
    return BaselineUpdate(path=conf.out, document=document, changed=changed, created=existing is None,
                          changes=changed_lines, notes=notes)


def _baseline_inputs(conf: BaselineOptions) -> tuple[Any, Any, Any, Any]:
    """Everything a baseline update takes, checked before anything is measured or written:
    the existing file, the saved runs or the scenarios to measure, the calibration to estimate with."""
    from memprobe.estimate.calibration import find_calibration
    from memprobe.gate.update import refuse_other_kinds, restrict, restrict_set
    from memprobe.model.comparison import load_comparison
    from memprobe.model.scenario import load_scenario_file

    existing = _existing_baseline(conf)
    wanted = list(dict.fromkeys(conf.scenarios))
    scenario_set = comparison = None
    if conf.from_dir is not None:
        comparison = restrict(load_comparison(conf.from_dir), wanted, str(conf.from_dir))
        refuse_other_kinds(existing, comparison, str(conf.from_dir))
    elif conf.scenarios_file is not None:
        loaded = load_scenario_file(conf.scenarios_file)
        for name in wanted:
            loaded.get(name)
        scenario_set = restrict_set(loaded, wanted)
    else:
        assert existing is not None
        scenario_set = existing.scenario_set(wanted or None)
    if conf.estimate and conf.from_dir is not None:
        raise UsageError("--estimate estimates the scenarios; --from takes saved runs: give one")
    _refuse_device_with_estimate(conf.estimate, conf.launch.device)
    if comparison is None and existing is not None:
        check_device_matches(existing, existing.names(), "estimate" if conf.estimate else conf.launch.device)
    calibration = find_calibration(None, conf.calibration) if conf.estimate else None
    if scenario_set is not None:
        scenario_set = repointed(scenario_set, sglang=conf.sglang, vllm=conf.vllm)
    return existing, comparison, scenario_set, calibration


def _existing_baseline(conf: BaselineOptions) -> "Optional[Baseline]":
    from memprobe.paths import check_output_path
    from memprobe.gate.baseline import load_baseline

    if conf.scenarios_file is not None and conf.from_dir is not None:
        raise UsageError("give either --scenarios FILE or --from RUN_DIR, not both")
    if conf.out.is_dir():
        raise UsageError(f"--out {conf.out} is a directory; give a .json file path")
    existing = load_baseline(conf.out) if conf.out.exists() else None
    if conf.scenarios_file is None and conf.from_dir is None and existing is None:
        raise UsageError(f"nothing to measure: {conf.out} does not exist yet; give --scenarios FILE or --from RUN_DIR")
    if conf.from_dir is not None and not Path(conf.from_dir).exists():
        raise UsageError(f"--from {conf.from_dir} does not exist")
    check_output_path(conf.out, "--out", missing_folders_allowed=True)
    return existing

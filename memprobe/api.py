"""memprobe as plain Python: what every ``memprobe`` command does, for an engine's own tests and scripts.

Each function takes one typed options value (a frozen dataclass whose field defaults are the command
line's defaults: the CLI reads them from here) or the same fields as keywords, and returns a typed value;
nothing is printed but notes on stderr, progress when ``launch.progress`` is on, and nothing exits.
Bad input raises :class:`memprobe.errors.UsageError` before anything is launched or written; every
error is a :class:`memprobe.errors.MemprobeError` whose ``exit_code`` is the CLI's.

    >>> from memprobe import api
    >>> estimate = api.estimate(tp=8, ep=4, stacks="lean")      # no GPU, nothing measured
    >>> api.is_estimate(estimate)
    True
    >>> worst = max(api.total_after_first_use(estimate, "tp8-ep4-lean").values())

Functions: :func:`plan` (groups of a layout), :func:`estimate` (a comparison estimated from NCCL's rules and a
calibration), :func:`calibrate` (measure a GPU's constants for the estimate), :func:`check_estimate` (estimate
beside measured runs), :func:`run` (measure one layout),
:func:`compare` (measure several), :func:`load` (a saved run or comparison), :func:`make_baseline` (write a
baseline file), :func:`judge` (a gate's verdict). Helpers read per-rank figures out of what they return:
:func:`total_after_first_use`, :func:`communicators`. Launch settings (``--device cpu`` and the torchrun options)
are a :class:`LaunchOptions` under ``launch``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, TypeVar

from memprobe.errors import MeasurementError, MemprobeError, UsageError
from memprobe.launch.options import LaunchOptions

if TYPE_CHECKING:  # the values' types; imported where used, so that `memprobe estimate` starts fast
    from memprobe.estimate.calibration import Calibration
    from memprobe.estimate.check import RunCheck
    from memprobe.gate.baseline import Baseline
    from memprobe.gate.judge import GateResult
    from memprobe.model.comparison import Comparison, ScenarioRun
    from memprobe.engines.api import LayoutBase as Layout, Plan as GroupsPlan
    from memprobe.model.scenario import ScenarioSet
    from memprobe.engines.stacks import Stack

__all__ = [
    "BaselineOptions", "BaselineUpdate", "CalibrateOptions", "CompareOptions", "EstimateOptions", "GateOptions",
    "LaunchOptions", "Plan", "PlanOptions", "RunOptions", "Verdict", "calibrate", "check_estimate", "communicators",
    "compare", "estimate", "is_estimate", "judge", "load", "make_baseline", "plan", "run", "total_after_first_use",
]

Options = TypeVar("Options")


def _options(kind: type[Options], given: Optional[Options], overrides: dict[str, Any]) -> Options:
    """``given`` with ``overrides`` applied, or the options made from the overrides alone."""
    unknown = sorted(set(overrides) - {f.name for f in fields(kind)})  # type: ignore[arg-type]
    if unknown:
        raise TypeError(f"{kind.__name__} has no field(s) {', '.join(unknown)}")
    return replace(given, **overrides) if given is not None else kind(**overrides)  # type: ignore[type-var]


# ------------------------------------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class Widths:
    """The layout's widths besides TP and EP (SGLang's --pp, --moe-dp-size, --attn-dp-size, --attn-cp-size)."""

    pp: int = 1
    moe_dp: int = 1
    attn_dp: int = 1
    attn_cp: int = 1


@dataclass(frozen=True, kw_only=True)
class Workers:
    """What the workers do besides building groups: the first collective, the environment preset, ``KEY=VALUE``s."""

    warmup: str = "tiny"
    env_preset: str = "sglang"
    env: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PlanOptions(Widths):
    tp: int
    ep: int = 1
    stack: str = "lean"
    engine: str = "memprobe"  # any name memprobe.engines knows: sglang-ref (memprobe), sglang, ...


@dataclass(frozen=True, kw_only=True)
class RunOptions(Widths, Workers):
    tp: int
    ep: int = 1
    stack: str = "lean"
    engine: str = "memprobe"
    sglang: str = ""  # with engine "sglang": a site folder holding it (default: the importable one)
    launch: LaunchOptions = LaunchOptions()


@dataclass(frozen=True, kw_only=True)
class CompareOptions(Widths, Workers):
    tp: Optional[int] = None  # default: every visible GPU (4 with device cpu)
    ep: Optional[int] = None  # default: tp / 2
    stacks: str = "full,lean"
    baseline_tp: Optional[int] = None
    scenarios: Optional[Path] = None  # a scenario TOML file instead of the headline layouts
    engine: str = "memprobe"  # memprobe, sglang, or memprobe,sglang
    sglang: tuple[str, ...] = ()  # LABEL=SITE: the MoE layout on a real SGLang installation
    jobs: int = 0  # scenarios at once; 0: all on GPUs, one after another on cpu
    launch: LaunchOptions = LaunchOptions()


@dataclass(frozen=True, kw_only=True)
class EstimateOptions(Widths, Workers):
    tp: Optional[int] = None
    ep: Optional[int] = None
    stacks: str = "full,lean"
    baseline_tp: Optional[int] = None
    scenarios: Optional[Path] = None
    gpus_per_node: Optional[int] = None
    nnodes: Optional[int] = None
    gpu: Optional[str] = None  # default: the packaged calibration's GPU model
    calibration: Optional[Path] = None
    engine: str = "memprobe"
    sglang: Optional[Path] = None
    progress: bool = True  # of the --device cpu run that learns real SGLang's flags (engine sglang)


@dataclass(frozen=True, kw_only=True)
class GateOptions:
    baseline: Path
    results: "Optional[Path | Comparison]" = None  # judge these instead of measuring (or estimating)
    scenarios: tuple[str, ...] = ()  # only these baseline scenarios
    relative: Optional[str] = None  # e.g. "5%": for every metric, over the baseline file's
    absolute: Optional[str] = None  # e.g. "64MiB"
    thresholds: tuple[str, ...] = ()  # "scenario=NAME,metric=GLOB,relative=P,absolute=SIZE,max=SIZE,ignore=true"
    allow_env_mismatch: bool = False
    sglang: str = ""
    estimate: bool = False
    calibration: Optional[Path] = None
    launch: LaunchOptions = LaunchOptions()


@dataclass(frozen=True, kw_only=True)
class BaselineOptions:
    out: Path
    scenarios_file: Optional[Path] = None
    from_dir: Optional[Path] = None
    scenarios: tuple[str, ...] = ()
    estimate: bool = False
    calibration: Optional[Path] = None
    gpus_per_node: Optional[int] = None
    sglang: str = ""
    launch: LaunchOptions = LaunchOptions()


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions:
    out: Path  # the calibration file to write (.json)
    nvlinks: Optional[int] = None  # NVLinks per GPU of the node estimated for (default: what NVML reports here)
    gpu_index: int = 0  # which visible GPU to measure (CUDA order)


# ------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Plan:
    """The groups SGLang builds for a layout, and the stack's communicators for each."""

    groups: "GroupsPlan"
    stack: "Stack"


@dataclass(frozen=True)
class BaselineUpdate:
    """A baseline file written by :func:`make_baseline`: its document, what changed, notes on dropped thresholds."""

    path: Path
    document: dict[str, Any]
    changed: bool  # False: the file already held exactly this
    created: bool  # the file did not exist before
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ranks(self) -> int:
        return sum(len(scenario["ranks"]) for scenario in self.document["scenarios"].values())


def __getattr__(name: str) -> Any:
    """``api.Verdict``: :func:`judge`'s value (memprobe.gate.judge.GateResult: ``exit_code``, ``findings``,
    ``breaches``, ``headline()``), imported when first asked for so that the estimate path stays light."""
    if name == "Verdict":
        from memprobe.gate.judge import GateResult

        return GateResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------- plan


def plan(options: Optional[PlanOptions] = None, **fields_: Any) -> Plan:
    """Every group SGLang 0.5.23 builds for a layout, and the stack's communicators; nothing is launched.

    >>> p = plan(tp=8, ep=4)
    >>> [g.name for g in p.groups.groups][:2]
    ['world', 'tp']
    """
    conf = _options(PlanOptions, options, fields_)
    check_choices(engine=conf.engine)
    engine = _engine(conf.engine).engine
    layout = layout_of(conf.tp, conf.ep, conf, conf.engine)
    stack = engine.resolve_stack(_stack_of(engine, conf.stack, PlanOptions.stack))
    return Plan(groups=engine.plan(layout), stack=stack)


def _stack_of(engine: Any, given: str, default: str) -> str:
    """``--stack`` as given, or, left at its default (SGLang's ``lean``) for an engine without that stack, the
    engine's own default."""
    if given == default and given not in engine.builtin_stack_names and not Path(given).exists():
        return str(engine.default_stack)
    return given


def _stacks_of(engine: Any, given: str, default: str) -> str:
    """``--stacks`` as given, or, left at its default for an engine without those stacks, the engine's pair."""
    names = [name.strip() for name in given.split(",")]
    if given == default and not all(name in engine.builtin_stack_names for name in names):
        return ",".join(engine.stack_pair or (engine.default_stack,))
    return given


def _engine(name: str) -> Any:
    """The engine and mode ``--engine name`` stands for (:class:`memprobe.engines.api.EngineRef`)."""
    from memprobe import engines

    return engines.get(name)


def _widths(tp: Optional[int], ep: Optional[int], widths: Widths) -> dict[str, Optional[int]]:
    return {"tp": tp, "ep": ep, "pp": widths.pp, "moe_dp": widths.moe_dp, "attn_dp": widths.attn_dp,
            "attn_cp": widths.attn_cp}


def layout_of(tp: int, ep: int, widths: Widths, engine: str = "memprobe") -> "Layout":
    """The engine's layout from the width flags (one it does not have must stay at 1)."""
    return _engine(engine).engine.layout(_widths(tp, ep, widths))


def check_choices(**given: str) -> None:
    """--warmup, --env-preset and --engine checked as the user wrote them, before any scenario is named
    after them (a scenario name built from a bad --warmup would be what the error names)."""
    from memprobe import engines
    from memprobe.model.scenario import WARMUPS, env_presets

    allowed = {"warmup": WARMUPS, "env_preset": tuple(sorted(env_presets())), "engine": engines.names()}
    for key, value in given.items():
        if value not in allowed[key]:
            raise UsageError(f"--{key.replace('_', '-')} {value!r}: use one of {', '.join(allowed[key])}")


# ------------------------------------------------------------------------------------------- estimate


def estimate(options: Optional[EstimateOptions] = None, **fields_: Any) -> "Comparison":
    """compare's scenarios estimated from NCCL's rules and a one-GPU calibration: no GPU, nothing measured.

    Every run of the result is marked as an estimate (``is_estimate``); never treat it as a measurement.

    >>> comparison = estimate(tp=8, ep=4, stacks="lean")
    >>> comparison.names()
    ['tp8', 'tp8-ep4-lean']
    """
    from memprobe.estimate.calibration import find_calibration

    conf = _options(EstimateOptions, options, fields_)
    check_choices(warmup=conf.warmup, env_preset=conf.env_preset, engine=conf.engine)
    calibration = find_calibration(conf.gpu, conf.calibration)
    scenario_set = _estimate_scenarios(conf)
    return estimated(scenario_set, calibration, conf.gpus_per_node, conf.nnodes, progress=conf.progress)


def _estimate_scenarios(conf: EstimateOptions) -> "ScenarioSet":
    from memprobe.model.scenario import load_scenario_file, parse_env_assignments, with_env

    extra_env = parse_env_assignments(conf.env)
    if conf.scenarios is not None:
        if conf.tp is not None or conf.ep is not None:
            raise UsageError("--scenarios FILE sets each scenario's layout; --tp/--ep would be ignored with it")
        scenario_set = with_env(load_scenario_file(conf.scenarios), extra_env)
    else:
        if conf.tp is None:
            raise UsageError("memprobe estimate needs --tp (or --scenarios FILE, or --check RUN)")
        ref = _engine(conf.engine)
        names = stack_names(_stacks_of(ref.engine, conf.stacks, EstimateOptions.stacks), ref.name)
        if ref.installed:
            names = [ref.engine.default_stack]  # one scenario: the engine's own flags replace the stack below
        scenario_set = _distinct(_headline(conf, ref.engine.name_for("reference") or ref.name, conf.tp, conf.ep,
                                           names, extra_env))
    if _engine(conf.engine).installed:
        scenario_set = _on_installed(scenario_set, conf.engine, str(conf.sglang) if conf.sglang else "")
    return scenario_set


def stack_names(stacks: str, engine: str = "memprobe") -> list[str]:
    """``--stacks full,lean`` as names, each checked against the engine's stacks."""
    names = [name.strip() for name in stacks.split(",") if name.strip()]
    if not names:
        raise UsageError("--stacks needs at least one stack, e.g. full,lean")
    for name in names:
        _engine(engine).engine.resolve_stack(name, option="--stacks")
    return names


def _headline(conf: "CompareOptions | EstimateOptions", engine: str, tp: int, ep: Optional[int], names: list[str],
              env: dict[str, str], sglang_sites: Sequence[tuple[str, str]] = ()) -> "ScenarioSet":
    from memprobe.model.scenario import headline_scenarios

    return headline_scenarios(engine, _widths(tp, ep, conf), stacks=names, baseline_tp=conf.baseline_tp,
                              env_preset=conf.env_preset, env=env, warmup=conf.warmup, sglang_sites=list(sglang_sites))


def _distinct(scenario_set: "ScenarioSet") -> "ScenarioSet":
    """Scenarios that would build the same groups with the same flags dropped, with a note each."""
    from memprobe.model.distinct import distinct_scenarios

    scenario_set, repeats = distinct_scenarios(scenario_set)
    for line in repeats:
        print(f"memprobe: note: {line}", file=sys.stderr)
    return scenario_set


def _on_installed(scenario_set: "ScenarioSet", engine: str, site: str) -> "ScenarioSet":
    """Every scenario on the installed engine (its own flags: stack installed), as ``--engine sglang`` measures it."""
    from memprobe.model.scenario import ScenarioSet

    ref = _engine(engine)
    site = ref.engine.check_site(site, f"--sglang {site}") if site else ""
    names = {s.name: f"{s.layout.slug()}.{ref.name}" for s in scenario_set.scenarios}
    installed = ref.engine.resolve_stack("installed")
    renamed = {names[s.name]: replace(s, name=names[s.name], engine=ref.name, sglang=site, stack="installed",
                                      resolved_stack=installed) for s in scenario_set.scenarios}
    return ScenarioSet(scenarios=tuple(renamed.values()), baseline=names[scenario_set.baseline])


def estimated(scenario_set: "ScenarioSet", calibration: "Calibration", gpus_per_node: Optional[int],
              nnodes: Optional[int], progress: bool = False) -> "Comparison":
    """Every scenario estimated (estimate, gate and baseline with ``estimate``); scenarios on real SGLang
    first learn its flags from a --device cpu run of it."""
    from memprobe.estimate.comparison import estimate_comparison

    on_sglang = any(scenario.engine_ref.installed for scenario in scenario_set.scenarios)
    sglang_runs = _sglang_flags_runs(scenario_set, progress) if on_sglang else None
    return estimate_comparison(scenario_set, calibration, gpus_per_node=gpus_per_node, nnodes=nnodes, sglang_runs=sglang_runs)


def _sglang_flags_runs(scenario_set: "ScenarioSet", progress: bool) -> dict[str, Any]:
    """A --device cpu run of each scenario on an installed engine: the flags its groups were built with."""
    import tempfile

    from memprobe.model.scenario import ScenarioSet

    on_sglang = tuple(scenario for scenario in scenario_set.scenarios if scenario.engine_ref.installed)
    with tempfile.TemporaryDirectory(prefix="memprobe-estimate-") as folder:
        options = LaunchOptions(device="cpu", out_dir=Path(folder), progress=progress)
        try:
            comparison = measure(ScenarioSet(scenarios=on_sglang, baseline=on_sglang[0].name), options)
        except MeasurementError as error:  # its folder goes with the temporary one: say what failed here
            raise MeasurementError(f"the --device cpu run of SGLang that tells its groups' flags failed: "
                                   f"{_first_failure(Path(folder)) or error}") from None
        return {item.scenario.name: item.run for item in comparison.runs}


def _first_failure(folder: Path) -> str:
    from memprobe.model.run_files import load_run

    for record in sorted(folder.rglob("run.json")):
        try:
            failure = load_run(record.parent).record.failure
        except MemprobeError:
            continue
        if failure is not None:
            last = failure.last_lines[-1].strip() if failure.last_lines else ""
            return failure.describe() + (f"; last line: {last}" if last else "")
    return ""


def calibrate(options: Optional[CalibrateOptions] = None, **fields_: Any) -> "Calibration":
    """Measure one GPU's per-process constants for :func:`estimate` and write them to ``out`` (needs a GPU; under a
    minute). The parent reads NVML only; CUDA and NCCL run in processes of their own.

    >>> calibration = calibrate(out="my-h200.json", nvlinks=18)           # doctest: +SKIP
    >>> estimate(tp=8, ep=4, calibration="my-h200.json")                  # doctest: +SKIP
    """
    from memprobe.launch.calibrate import calibrate as measure_calibration

    conf = _options(CalibrateOptions, options, fields_)
    return measure_calibration(Path(conf.out), conf.nvlinks, conf.gpu_index)


def check_estimate(paths: Sequence[Path | str], gpu: Optional[str] = None,
                   calibration: Optional[Path] = None) -> list["RunCheck"]:
    """The estimate of every measured run under ``paths`` beside its measurement, per rank and step.

    Each run is estimated with the calibration of its GPU model (``gpu`` or ``calibration``: that one for all).
    A result's ``within`` says whether every total is inside max(2 %, 16 MiB); ``skipped`` why it was not checked.

    >>> results = check_estimate(["results/h200x4-20261127/compare-tp4-ep2"])
    >>> all(r.within for r in results if not r.skipped)
    True
    """
    from memprobe.estimate.calibration import find_calibration, load_calibration, packaged_calibrations
    from memprobe.estimate.check import check_run, measured_runs

    chosen = find_calibration(gpu, calibration)
    explicit = gpu is not None or calibration is not None
    known = {c.gpu_model: c for c in ([chosen] if explicit else [load_calibration(p) for p in packaged_calibrations()])}
    return [check_run(where, measured, known.get) for where, measured in measured_runs(paths)]


def is_estimate(value: "Comparison | ScenarioRun | Any") -> bool:
    """Whether bytes were estimated, not measured (every run of a comparison)."""
    from memprobe.model.memory_kind import ESTIMATED_GPU, memory_kind

    runs = [item.run for item in value.runs] if hasattr(value, "runs") else [getattr(value, "run", value)]
    return all(memory_kind(one) == ESTIMATED_GPU for one in runs)


# ------------------------------------------------------------------------------------------- measure


def run(options: Optional[RunOptions] = None, **fields_: Any) -> "ScenarioRun":
    """Measure one layout with real torchrun workers: per group and step, the bytes each rank added.

    Writes ``readings.csv`` and ``run.json`` under ``launch.out_dir`` (the result's ``run.path``).
    With ``launch=LaunchOptions(device="cpu")`` the same pipeline runs on gloo with host-RSS readings.

    >>> measured = run(tp=2, ep=2, launch=LaunchOptions(device="cpu", out_dir=tmp_path, progress=False))
    >>> measured.run.record.status
    'complete'
    """
    from memprobe.launch.prepare import new_run_dir, preflight
    from memprobe.launch.progress import Progress
    from memprobe.launch.several import run_scenario
    from memprobe.model.comparison import ScenarioRun
    from memprobe.verbosity import detail

    conf = _options(RunOptions, options, fields_)
    scenario = _run_scenario(conf)
    launch = conf.launch
    check_out_dir(launch.out_dir)
    preflight([scenario], launch)
    run_dir = launch.out_dir / launch.run_id if launch.run_id else new_run_dir(launch.out_dir, scenario.name)
    if run_dir.exists():
        raise UsageError(f"run folder {run_dir} already exists; choose another --run-id")
    detail(f"memprobe: measuring {scenario.name} on --device {launch.device} into {run_dir}")
    with Progress(enabled=launch.progress) as progress:
        result = run_scenario(scenario, launch, run_dir, progress=progress, command=_command_line())
    return ScenarioRun(scenario=scenario, run=result)


def _run_scenario(conf: RunOptions) -> Any:
    from memprobe.model.scenario import DEFAULT_ENGINE, Scenario, parse_env_assignments, stack_label

    check_choices(engine=conf.engine)
    ref = _engine(conf.engine)
    layout = layout_of(conf.tp, conf.ep, conf, conf.engine)
    check_choices(warmup=conf.warmup, env_preset=conf.env_preset)
    spec = _stack_of(ref.engine, conf.stack, RunOptions.stack)
    chosen = ref.engine.resolve_stack(spec)
    sglang = conf.sglang
    if sglang:
        if not ref.installed:
            raise UsageError("--sglang needs --engine sglang")
        sglang = ref.engine.check_site(sglang, f"--sglang {sglang}")
    suffix = "" if ref.name == DEFAULT_ENGINE else f".{ref.name}"
    return Scenario(name=f"{layout.slug()}-{stack_label(spec, chosen.name)}{suffix}", layout=layout,
                    stack=spec, env_preset=conf.env_preset, env=parse_env_assignments(conf.env),
                    warmup=conf.warmup, engine=conf.engine, sglang=sglang)


def compare(options: Optional[CompareOptions] = None, **fields_: Any) -> "Comparison":
    """Measure --tp T against --tp T --ep E with each stack (or a scenario file's scenarios), each in clean processes.

    >>> comparison = compare(tp=2, ep=2, launch=LaunchOptions(device="cpu", out_dir=tmp_path, progress=False))
    >>> comparison.names()
    ['tp2', 'tp2-ep2-full', 'tp2-ep2-lean']
    """
    conf = _options(CompareOptions, options, fields_)
    scenario_set = compare_scenarios(conf)
    check_out_dir(conf.launch.out_dir)
    return measure(scenario_set, conf.launch, jobs=conf.jobs)


def compare_scenarios(conf: CompareOptions) -> "ScenarioSet":
    """The scenarios :func:`compare` measures, checked; notes (repeats, NCCL settings gloo ignores) on stderr."""
    from memprobe import engines as registry
    from memprobe.model.scenario import load_scenario_file, parse_env_assignments, with_engines, with_env

    check_choices(warmup=conf.warmup, env_preset=conf.env_preset)
    engines = list(dict.fromkeys(e.strip() for e in conf.engine.split(",") if e.strip()))
    if not engines or any(e not in registry.names() for e in engines):
        raise UsageError(f"--engine {conf.engine!r}: use {', '.join(registry.names())}, or several joined by a comma "
                         f"(memprobe,sglang)")
    if conf.jobs < 0:
        raise UsageError(f"--jobs must be 0 (auto) or more, got {conf.jobs}")
    extra_env = parse_env_assignments(conf.env)
    sglang_sites = _sglang_sites(conf.sglang)
    if conf.scenarios is not None:
        _refuse_ignored_with_file(conf, sglang_sites)
        scenario_set = with_env(load_scenario_file(conf.scenarios), extra_env)
    else:
        scenario_set = _compare_headline(conf, engines[0], extra_env, sglang_sites)
    scenario_set = with_engines(scenario_set, engines)
    _note_nccl_settings_on_cpu(scenario_set, conf.launch.device)
    return scenario_set


def _sglang_sites(items: Sequence[str]) -> list[tuple[str, str]]:
    from memprobe.engines.sglang.install import check_site
    from memprobe.model.scenario import parse_sglang_sites

    return [(label, check_site(path, f"--sglang {label}={path}")) for label, path in parse_sglang_sites(list(items))]


def _refuse_ignored_with_file(conf: CompareOptions, sglang_sites: list[tuple[str, str]]) -> None:
    """A scenario file sets each scenario's layout, stacks, warm-up, preset and SGLang: the options for them
    are refused with it unless left at their defaults (CompareOptions' own)."""
    given = ("tp", "ep", "pp", "moe_dp", "attn_dp", "attn_cp", "stacks", "baseline_tp", "warmup", "env_preset")
    defaults = CompareOptions()
    ignored = [name for name in given if getattr(conf, name) != getattr(defaults, name)]
    if sglang_sites:
        ignored.append("sglang")
    if ignored:
        options = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise UsageError(f"--scenarios FILE sets each scenario's layout, stacks, warm-up, preset and SGLang; {options} "
                         f"would be ignored with it: put them in the file (per scenario or under [defaults])")


def _compare_headline(conf: CompareOptions, engine: str, env: dict[str, str],
                      sglang_sites: list[tuple[str, str]]) -> "ScenarioSet":
    """The engine's headline: for SGLang --tp T as the baseline, the MoE layout once per stack and SGLang
    installation; repeats dropped with a note."""
    ref = _engine(engine)
    reference = ref.engine.name_for("reference") or ref.name
    tp = conf.tp if conf.tp is not None else _default_tp(conf.launch)
    ep = conf.ep if conf.ep is not None else max(1, tp // 2)
    if "ep" not in ref.engine.layout_type.field_names():
        ep = conf.ep
    stacks = _stacks_of(ref.engine, conf.stacks, CompareOptions.stacks)
    scenario_set = _headline(conf, reference, tp, ep, stack_names(stacks, reference), env, sglang_sites)
    if conf.tp is None:
        print(f"memprobe: no --tp given; comparing the largest layout this node supports: --tp {tp} --ep {ep}", file=sys.stderr)
    return _distinct(scenario_set)


def _default_tp(launch: LaunchOptions) -> int:
    if launch.device == "cpu":
        return 4
    from memprobe.launch.options import worker_environment
    from memprobe.engines.sglang.layout import SGLangLayout
    from memprobe.launch.prepare import visible_gpu_count
    from memprobe.model.scenario import Scenario

    count, reason = visible_gpu_count(worker_environment(Scenario(name="probe", layout=SGLangLayout(tp=1)), launch))
    if count == 0:
        raise UsageError(f"no NVIDIA GPU visible ({reason or 'NVML found none'}); use --device cpu or give --tp")
    return count


def _note_nccl_settings_on_cpu(scenario_set: "ScenarioSet", device: str) -> None:
    settings = sorted({key for s in scenario_set.scenarios for key in s.env if key.startswith(("NCCL_", "TORCH_NCCL_"))})
    if device == "cpu" and settings:
        one = len(settings) == 1
        print(f"memprobe: note: --device cpu builds gloo groups only: {', '.join(settings)} "
              f"{'changes' if one else 'change'} nothing there (scenarios that differ only in "
              f"{'it' if one else 'them'} differ by host-memory noise)", file=sys.stderr)


def check_out_dir(out_dir: Path) -> None:
    from memprobe.launch.prepare import check_out_dir as check

    check(out_dir)


def measure(scenario_set: "ScenarioSet", launch: LaunchOptions, jobs: int = 0) -> "Comparison":
    """Run a scenario set with progress on stderr (a bar on a terminal, sparse lines in CI logs)."""
    from memprobe.launch.progress import Progress
    from memprobe.launch.several import run_scenarios
    from memprobe.verbosity import detail

    detail(f"memprobe: measuring {', '.join(s.name for s in scenario_set.scenarios)} on --device {launch.device}, "
           f"run folders under {launch.out_dir}")
    with Progress(enabled=launch.progress) as progress:
        return run_scenarios(scenario_set, launch, progress=progress, command=_command_line(), jobs=jobs)


def gathered_elsewhere(runs: "Sequence[ScenarioRun]") -> bool:
    """Whether another node gathered these runs' readings (torchrun across nodes: node 0 gathers them);
    if so, says on stderr where they are and what this node kept, per run."""
    if not any(item.run.record.results_at is not None for item in runs):
        return False
    for item in runs:
        where = item.run.record.results_at or {}
        ranks = sorted({info.rank for info in item.run.record.ranks} | set(item.run.ranks))
        print(f"memprobe: {item.scenario.name}: this node's ranks {ranks[0]}-{ranks[-1]} finished; the gathered results "
              f"are on host {where.get('host', '?')} in {where.get('folder', '?')}; this node kept its ranks' streams in "
              f"{item.run.path}", file=sys.stderr)
    return True


def _command_line() -> list[str]:
    """What run.json records as the command that made it: ``memprobe`` and this process's arguments."""
    return ["memprobe", *sys.argv[1:]]


# ------------------------------------------------------------------------------------------- load


def load(*paths: Path | str) -> "Comparison":
    """Saved runs and comparisons (folders written by run or compare), as one comparison.

    A scenario of a comparison without a finished run is listed in ``missing``, not raised.

    >>> comparison = load("results/h200x4-20261127/compare-tp4-ep2")
    >>> comparison.baseline
    'tp4'
    """
    from memprobe.model.comparison import load_comparison, merge_comparisons
    from memprobe.verbosity import detail

    if not paths:
        raise UsageError("give at least one run or comparison folder")
    comparisons = [load_comparison(path) for path in paths]
    for path, loaded in zip(paths, comparisons):
        detail(f"memprobe: read {path}: {', '.join(loaded.names())}")
    return merge_comparisons(comparisons)


def total_after_first_use(value: "Comparison | ScenarioRun", scenario: Optional[str] = None) -> dict[int, int]:
    """Per rank, the bytes a scenario's run holds once every group has run its first collective (the gate's
    ``total_after_first_use``): ``{rank: bytes}``. ``scenario``: which run of a comparison (default: its last)."""
    from memprobe.analysis.attribution import components_by_rank

    item = _scenario_run(value, scenario)
    return {rank: parts["total_after_first_use"] for rank, parts in components_by_rank(item.run).items()
            if parts.get("total_after_first_use") is not None}


def communicators(value: "Comparison | ScenarioRun", scenario: Optional[str] = None) -> dict[int, dict[str, dict[str, str]]]:
    """Per rank and group, what became of each communicator the stack may build: ``{0: {"moe_ep": {"pynccl":
    "skipped: not in stack", "custom_allreduce": "built v2 (...)"}}}`` (the worker's own account)."""
    item = _scenario_run(value, scenario)
    return {info.rank: info.communicators for info in item.run.record.ranks}


def _scenario_run(value: "Comparison | ScenarioRun", scenario: Optional[str]) -> "ScenarioRun":
    if not hasattr(value, "runs"):
        return value  # type: ignore[return-value]
    if scenario is None:
        return value.runs[-1]  # type: ignore[union-attr]
    try:
        return value.get(scenario)  # type: ignore[union-attr]
    except KeyError:
        raise UsageError(f"no scenario {scenario!r}; there are {', '.join(value.names())}") from None  # type: ignore[union-attr]


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

    conf = _options(GateOptions, options, fields_)
    baseline = load_baseline(conf.baseline)
    selected = baseline.select(list(conf.scenarios) or None)
    overrides = threshold_overrides(conf.relative, conf.absolute, conf.thresholds)
    check_overrides(baseline, overrides)
    sglang = conf.sglang
    if sglang:
        from memprobe.engines.sglang.install import check_site

        sglang = check_site(sglang)
    if conf.estimate and conf.results is not None:
        raise UsageError("--estimate estimates the baseline's scenarios again; --results judges saved runs: give one")
    calibration = _baseline_calibration(baseline, selected, conf.calibration) if conf.estimate else None
    if conf.results is None:
        check_device_matches(baseline, selected, "estimate" if conf.estimate else conf.launch.device)
    detail(f"memprobe gate: judging {', '.join(selected)} of {conf.baseline} "
           f"({'results in ' + str(_source(conf.results)) if conf.results is not None else ('estimated now' if conf.estimate else 'measured now')})")
    try:
        comparison = _gate_comparison(conf, baseline, selected, sglang, calibration)
        if comparison is None:
            return None
        return judged(baseline, comparison, thresholds_override=overrides, allow_env_mismatch=conf.allow_env_mismatch,
                      scenarios=selected, results_source=str(_source(conf.results)) if conf.results is not None else None)
    except MeasurementError as error:
        return failed_result(baseline, str(error), selected, conf.allow_env_mismatch)


def _gate_comparison(conf: GateOptions, baseline: "Baseline", selected: list[str], sglang: str,
                     calibration: Any) -> "Optional[Comparison]":
    """What the gate judges; None where another node gathered the measurement (that node judges)."""
    from memprobe.model.scenario import with_sglang

    if conf.results is not None:
        comparison = conf.results if hasattr(conf.results, "runs") else _load_results(Path(conf.results))
        check_results_match(baseline, selected, comparison, _source(conf.results))  # type: ignore[arg-type]
        return comparison  # type: ignore[return-value]
    scenario_set = with_sglang(baseline.scenario_set(selected), sglang)
    if conf.estimate:
        return _estimated_as_recorded(baseline, selected, scenario_set, calibration)
    comparison = measure(scenario_set, conf.launch)
    if gathered_elsewhere(comparison.runs):
        return None
    return comparison


def _source(results: Any) -> Any:
    return results.path if hasattr(results, "runs") else results


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
    """Saved results for the gate. A path that is a file is a usage error (2); no or broken results
    are a measurement problem (3): the step that should have produced them failed."""
    from memprobe.errors import DamagedInput
    from memprobe.model.comparison import load_comparison

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


def check_device_matches(baseline: "Baseline", selected: list[str], device: str) -> None:
    """A baseline of GPU memory cannot judge host memory, nor an estimate a measurement: say so before measuring.
    ``device`` "estimate" stands for ``--estimate``."""
    from memprobe.gate.baseline import check_same_kind
    from memprobe.model.memory_kind import ESTIMATED_GPU, KIND_OF_DEVICE

    if device == "estimate":
        check_same_kind(baseline, selected, ESTIMATED_GPU, "--estimate makes")
        return
    check_same_kind(baseline, selected, KIND_OF_DEVICE.get(device, device), f"measuring with --device {device} reads")


def check_results_match(baseline: "Baseline", selected: list[str], comparison: "Comparison", source: Any) -> None:
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
                           calibration: "Calibration") -> "Comparison":
    """The baseline's scenarios estimated on the topology the baseline recorded (GPUs per node, nodes)."""
    keys = [baseline.scenarios[name].environment_key for name in selected]
    gpus = {key.get("gpu_count") for key in keys}
    nodes = {key.get("nnodes") for key in keys}
    if len(gpus) > 1 or len(nodes) > 1:
        raise UsageError(f"the selected baseline scenarios were estimated on different nodes ({sorted(map(str, gpus))} GPUs "
                         f"per node); gate them one at a time with --scenario")
    return estimated(scenario_set, calibration, gpus.pop(), nodes.pop())


# ------------------------------------------------------------------------------------------- baseline


def make_baseline(options: Optional[BaselineOptions] = None, **fields_: Any) -> BaselineUpdate:
    """Write (or refresh) a baseline file from fresh measurements, estimates or saved runs (``from_dir``).

    The file is deterministic: identical numbers give an identical file. An existing file's thresholds and
    description are kept; with ``scenarios``, only those are replaced. Measured with ``launch`` (default cuda).

    >>> update = make_baseline(out=tmp_path / "b.json", from_dir="results/h200x4-20261127/compare-tp4-ep2")
    >>> update.created, update.changed
    (True, True)
    """
    from memprobe.gate.baseline import write_baseline
    from memprobe.gate.update import changes, new_document

    conf = _options(BaselineOptions, options, fields_)
    existing, comparison, scenario_set, calibration = _baseline_inputs(conf)
    if comparison is None:
        assert scenario_set is not None
        if conf.estimate:
            comparison = estimated(scenario_set, calibration, conf.gpus_per_node, None)
        else:
            comparison = measure(scenario_set, conf.launch)
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
    if comparison is None and existing is not None:
        check_device_matches(existing, existing.names(), "estimate" if conf.estimate else conf.launch.device)
    calibration = find_calibration(None, conf.calibration) if conf.estimate else None
    if conf.sglang and scenario_set is not None:
        from memprobe.engines.sglang.install import check_site
        from memprobe.model.scenario import with_sglang

        scenario_set = with_sglang(scenario_set, check_site(conf.sglang))
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

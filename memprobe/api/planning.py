"""plan and estimate: the groups of a layout, and what they would cost, from NCCL's rules and a calibration (no GPU,
nothing measured); check_estimate sets the estimate beside measured runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from memprobe.api.measuring import measure
from memprobe.api.options import EstimateOptions, LaunchOptions, PlanOptions, options_of
from memprobe.api.results import AssumedFacts, ListDecisions, Plan
from memprobe.api.scenarios import (
    check_choices, distinct, engine_of, env_preset_of, headline, installed_site, layout_of, stack_names, stack_of, stacks_of,
)
from memprobe.errors import Interrupted, MeasurementError, MemprobeError, OptionTypeError, UsageError
from memprobe.fields import as_path

if TYPE_CHECKING:
    from memprobe.estimate.calibration import Calibration
    from memprobe.estimate.check import RunCheck
    from memprobe.model.comparison import Comparison
    from memprobe.model.scenario import ScenarioSet

__all__ = ["check_estimate", "estimate", "estimated", "plan"]


def plan(options: Optional[PlanOptions] = None, **fields_: Any) -> Plan:
    """Every group an engine builds for a layout (SGLang 0.5.23's by default), the stack's communicator flags, and
    what each group builds (:meth:`Engine.decide`) on the facts the estimate assumes by default (``assumed``: no GPU
    is looked at); nothing is launched.

    >>> p = plan(tp=8, ep=4)
    >>> [g.name for g in p.groups.groups][:2]
    ['world', 'tp']
    """
    conf = options_of(PlanOptions, options, fields_)
    check_choices(engine=conf.engine)
    engine = engine_of(conf.engine).engine
    layout = layout_of(conf.tp, conf.ep, conf, conf.engine)
    stack = engine.resolve_stack(stack_of(engine, conf.stack))
    groups = engine.plan_for(layout, stack)
    assumed = _assumed_facts(engine)
    return Plan(groups=groups, stack=stack, assumed=assumed,
                decisions={group.name: _group_decisions(engine, group, stack, assumed) for group in groups.groups})


def _assumed_facts(engine: Any) -> AssumedFacts:
    """The estimate's defaults: the packaged calibration's GPU, nodes of up to eight NVSwitch-joined GPUs
    (``Topology.for_world`` without --gpus-per-node), the engine's default environment preset."""
    from memprobe.estimate.calibration import find_calibration
    from memprobe.estimate.model import MAX_GPUS_PER_NODE
    from memprobe.estimate.nccl_versions import resolve

    calibration = find_calibration(None, None)
    nccl, nccl_why, _ = resolve(None, calibration.nccl, engine.pinned_nccl)
    return AssumedFacts(gpu_model=calibration.gpu_model, compute_capability=calibration.compute_capability,
                        sm_count=calibration.sm_count, gpus_per_node=MAX_GPUS_PER_NODE,
                        env_preset=env_preset_of(engine, None), nccl=nccl, nccl_why=nccl_why)


def _group_decisions(engine: Any, group: Any, stack: Any, assumed: AssumedFacts) -> tuple[ListDecisions, ...]:
    """``engine.decide`` once per kind of rank list (how many nodes a list spans: rank r on node r // gpus_per_node,
    as the estimate places ranks), as the estimate's rules see a list (:func:`memprobe.estimate.model._facts`)."""
    from memprobe.engines.api import Facts
    from memprobe.model.scenario import env_presets

    env = engine.own_env(env_presets()[assumed.env_preset])
    spans: dict[int, int] = {}
    for ranks in group.rank_lists:
        nodes = len({rank // assumed.gpus_per_node for rank in ranks})
        spans[nodes] = spans.get(nodes, 0) + 1
    return tuple(ListDecisions(nodes=nodes, lists=count, decisions=tuple(engine.decide(
        group, stack, Facts(width=group.width, nodes=nodes, full_nvlink=True, capability=assumed.compute_capability,
                            sm_count=assumed.sm_count, env=env, nccl=assumed.nccl))))
        for nodes, count in sorted(spans.items()))


def estimate(options: Optional[EstimateOptions] = None, **fields_: Any) -> "Comparison":
    """compare's scenarios estimated from NCCL's rules and a one-GPU calibration: no GPU, nothing measured.

    Every run of the result is marked as an estimate (``is_estimate``); never treat it as a measurement.

    >>> comparison = estimate(tp=8, ep=4, stacks="lean")
    >>> comparison.names()
    ['tp8', 'tp8-ep4-lean']
    """
    from memprobe.estimate.calibration import find_calibration

    conf = options_of(EstimateOptions, options, fields_)
    check_choices(warmup=conf.warmup, env_preset=conf.env_preset, engine=conf.engine)
    calibration = find_calibration(conf.gpu, conf.calibration)
    scenario_set = _estimate_scenarios(conf)
    return estimated(scenario_set, calibration, conf.gpus_per_node, conf.nnodes, progress=conf.progress,
                     timeout_s=conf.timeout_s, nccl=conf.nccl, network=conf.network, nic_gbps=conf.nic_gbps)


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
        ref = engine_of(conf.engine)
        names = stack_names(stacks_of(ref.engine, conf.stacks), ref.name)
        if ref.installed:
            if conf.stacks is not None:  # would be dropped below: say so rather than estimate another
                raise UsageError(f"--engine {ref.name} estimates what the installed {ref.engine.label}'s own code asks "
                                 f"for (stack installed); --stacks {conf.stacks} is for the reproduction "
                                 f"(--engine {ref.engine.name_for('reference') or 'the reference engine'}); a change "
                                 f"to the engine is a change to its code (e.g. a patch to its site)")
            names = [ref.engine.default_stack]  # one scenario: the engine's own flags replace the stack below
        scenario_set = distinct(headline(conf, ref.engine.name_for("reference") or ref.name, conf.tp, conf.ep,
                                         names, extra_env, given_as=conf.engine))
    site = installed_site(conf.engine, sglang=conf.sglang, vllm=conf.vllm)
    if engine_of(conf.engine).installed:
        scenario_set = _on_installed(scenario_set, conf.engine, site)
    return scenario_set


def _on_installed(scenario_set: "ScenarioSet", engine: str, site: str) -> "ScenarioSet":
    """Every scenario on the installed engine (its own flags: stack installed), as ``--engine sglang`` measures it."""
    from memprobe.model.scenario import ScenarioSet, on_own_flags

    ref = engine_of(engine)
    installed = ref.engine.resolve_stack("installed")
    renamed = {s.name: on_own_flags(s, ref.name, site, installed) for s in scenario_set.scenarios}
    return ScenarioSet(scenarios=tuple(dict((s.name, s) for s in renamed.values()).values()),
                       baseline=renamed[scenario_set.baseline].name)


def estimated(scenario_set: "ScenarioSet", calibration: "Calibration", gpus_per_node: Optional[int],
              nnodes: Optional[int], progress: bool = False,
              timeout_s: float = LaunchOptions.timeout_s, nccl: Optional[str] = None, network: str = "ib-gdr",
              nic_gbps: Optional[float] = None) -> "Comparison":
    """Every scenario estimated (estimate, gate and baseline with ``estimate``); scenarios on real SGLang
    first learn its flags from a --device cpu run of it (``timeout_s``: its ranks' longest silence).
    ``nccl``, ``network``, ``nic_gbps``: as EstimateOptions."""
    from memprobe.estimate.comparison import estimate_comparison
    from memprobe.estimate.nccl import Network
    from memprobe.estimate.nccl_versions import resolve

    pinned = scenario_set.scenarios[0].engine_ref.engine.pinned_nccl
    joined, (version, why, _) = Network.of(network, nic_gbps), resolve(nccl, calibration.nccl, pinned)

    on_sglang = any(scenario.engine_ref.installed for scenario in scenario_set.scenarios)
    sglang_runs = _sglang_flags_runs(scenario_set, progress, timeout_s) if on_sglang else None
    return estimate_comparison(scenario_set, calibration, gpus_per_node=gpus_per_node, nnodes=nnodes, sglang_runs=sglang_runs,
                               network=joined, nccl_version=version, nccl_why=why)


def _sglang_flags_runs(scenario_set: "ScenarioSet", progress: bool, timeout_s: float) -> dict[str, Any]:
    """A --device cpu run of each scenario on an installed engine: the flags its groups were built with."""
    import tempfile

    from memprobe.model.scenario import ScenarioSet

    on_sglang = tuple(scenario for scenario in scenario_set.scenarios if scenario.engine_ref.installed)
    with tempfile.TemporaryDirectory(prefix="memprobe-estimate-") as folder:
        options = LaunchOptions(device="cpu", out_dir=Path(folder), progress=progress, timeout_s=timeout_s)
        try:
            comparison = measure(ScenarioSet(scenarios=on_sglang, baseline=on_sglang[0].name), options)
        except Interrupted as interrupt:  # its readings go with the temporary folder: name none
            raise Interrupted(interrupt.signal_number) from None
        except MeasurementError as error:  # its folder goes with the temporary one: say what failed here
            label = on_sglang[0].engine_ref.engine.label  # SGLang, vLLM
            raise MeasurementError(f"the --device cpu run of {label} that tells its groups' flags failed: "
                                   f"{_first_failure(Path(folder)) or error}") from None
        for line in dict.fromkeys(w for item in comparison.runs for info in item.run.record.ranks for w in info.warnings):
            print(f"memprobe: note: {line}", file=sys.stderr)  # e.g. what SGLang's import chain could not import here
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


def check_estimate(paths: "Sequence[str | os.PathLike[str]] | str | os.PathLike[str]", gpu: Optional[str] = None,
                   calibration: "Optional[str | os.PathLike[str]]" = None) -> list["RunCheck"]:
    """The estimate of every measured run under ``paths`` beside its measurement, per rank and step.

    ``paths``: folders, or one folder. Each run is estimated with the calibration of its GPU model (``gpu`` or
    ``calibration``: that one for all).
    A result's ``within`` says whether every total is inside max(2 %, 16 MiB); ``skipped`` why it was not checked.

    >>> results = check_estimate(["results/h200x4-20261127/compare-tp4-ep2"])
    >>> all(r.within for r in results if not r.skipped)
    True
    """
    from memprobe.estimate.calibration import find_calibration, load_calibration, packaged_calibrations
    from memprobe.estimate.check import check_run, measured_runs

    folders = [as_path(path, "check_estimate: a run folder")
               for path in (paths if isinstance(paths, (list, tuple)) else [paths])]
    if gpu is not None and not isinstance(gpu, str):
        raise OptionTypeError(f"check_estimate: gpu must be a str, got {type(gpu).__name__}")
    chosen = find_calibration(gpu, as_path(calibration, "check_estimate: calibration") if calibration is not None else None)
    explicit = gpu is not None or calibration is not None
    known = {c.gpu_model: c for c in ([chosen] if explicit else [load_calibration(p) for p in packaged_calibrations()])}
    return [check_run(where, measured, known.get) for where, measured in measured_runs(folders)]

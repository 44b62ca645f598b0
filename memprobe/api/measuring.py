"""run and compare: scenarios measured with real torchrun workers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from memprobe.api.options import CompareOptions, LaunchOptions, RunOptions, options_of
from memprobe.api.scenarios import (
    check_choices, distinct, engine_of, env_preset_of, headline, installed_site, layout_of, stack_names, stack_of,
    stacks_of,
)
from memprobe.errors import UsageError

if TYPE_CHECKING:
    from memprobe.model.comparison import Comparison, ScenarioRun
    from memprobe.model.scenario import Scenario, ScenarioSet

__all__ = ["compare", "gathered_elsewhere", "measure", "run"]


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

    conf = options_of(RunOptions, options, fields_)
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
    from memprobe.model.scenario import DEFAULT_ENGINE, INSTALLED_STACK, Scenario, parse_env_assignments, stack_label

    check_choices(engine=conf.engine)
    ref = engine_of(conf.engine)
    layout = layout_of(conf.tp, conf.ep, conf, conf.engine)
    check_choices(warmup=conf.warmup, env_preset=conf.env_preset)
    spec = stack_of(ref.engine, conf.stack)
    if ref.installed and not ref.engine.installed_takes_stacks and conf.stack is None:
        spec = INSTALLED_STACK  # the engine's own code decides; memprobe forces no stack on it
    chosen = ref.engine.resolve_stack(spec)
    sglang = installed_site(conf.engine, sglang=conf.sglang, vllm=conf.vllm)
    suffix = "" if ref.name == DEFAULT_ENGINE else f".{ref.name}"
    return Scenario(name=f"{layout.slug()}-{stack_label(spec, chosen.name)}{suffix}", layout=layout,
                    stack=spec, env_preset=env_preset_of(ref.engine, conf.env_preset), env=parse_env_assignments(conf.env),
                    warmup=conf.warmup, engine=conf.engine, sglang=sglang)


def compare(options: Optional[CompareOptions] = None, **fields_: Any) -> "Comparison":
    """Measure --tp T against --tp T --ep E with each stack (or a scenario file's scenarios), each in clean processes.

    >>> comparison = compare(tp=2, ep=2, launch=LaunchOptions(device="cpu", out_dir=tmp_path, progress=False))
    >>> comparison.names()
    ['tp2', 'tp2-ep2-full', 'tp2-ep2-lean']
    """
    conf = options_of(CompareOptions, options, fields_)
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
    sglang_sites = _sites(engines[0], conf)
    if conf.scenarios is not None:
        _refuse_ignored_with_file(conf, sglang_sites)
        scenario_set = with_env(load_scenario_file(conf.scenarios), extra_env)
    else:
        scenario_set = _compare_headline(conf, engines[0], extra_env, sglang_sites)
    scenario_set = with_engines(scenario_set, engines)
    if sglang_sites:
        _refuse_missing_importable(scenario_set, engines[0])
    _note_nccl_settings_on_cpu(scenario_set, conf.launch.device)
    return scenario_set


def _refuse_missing_importable(scenario_set: "ScenarioSet", engine: str) -> None:
    """``--engine vllm --vllm SITE``: the sites add scenarios of their own, and ``--engine vllm`` still runs the
    engine this Python imports; where none is importable, one line saying so (rather than preflight's "install
    it", which a user who gave the site would not read as meant for the other scenario)."""
    own = [s for s in scenario_set.scenarios if s.engine_ref.installed and not s.sglang]
    if not own:
        return
    ref = own[0].engine_ref
    if ref.engine.installed_version("") != "?":
        return
    flag = f"--{ref.engine.name}"
    reference = engine_of(engine).engine.name_for("reference") or engine
    raise UsageError(f"--engine {ref.name} runs {', '.join(s.name for s in own)} on the {ref.engine.name} this Python "
                     f"imports, and none is found; {flag} SITE adds a scenario of its own for each site: compare the "
                     f"sites with --engine {reference} {flag} SITE, or make {ref.engine.name} importable (PYTHONPATH)")


def _sites(engine: str, conf: CompareOptions) -> list[tuple[str, str]]:
    """``--sglang LABEL=SITE`` or ``--vllm LABEL=SITE`` (or a bare SITE, labelled by its release): installations of
    the engine compared (checked); the other engine's flag is refused in one line."""
    from memprobe.model.scenario import parse_sites

    ref = engine_of(engine)
    found: list[tuple[str, str]] = []
    for flag, items in (("sglang", conf.sglang), ("vllm", conf.vllm)):
        if not items:
            continue
        if ref.engine.name != flag:
            raise UsageError(f"--{flag} LABEL=SITE adds {flag} installations to a comparison of engine {flag}; "
                             f"here --engine {engine}")
        labelled = parse_sites(list(items), f"--{flag}", lambda site: _release_label(ref.engine, site, f"--{flag}"))
        found += [(label, ref.engine.check_site(path, f"--{flag} {label}={path}")) for label, path in labelled]
    return found


def _release_label(engine: Any, site: str, flag: str) -> str:
    """A bare ``--vllm SITE``'s label: the release installed there, read from its sources, made name-safe."""
    from memprobe.model.scenario import name_safe

    checked = engine.check_site(site, f"{flag} {site}")
    label = name_safe(engine.installed_version(checked))
    if not label or label == "unknown":
        raise UsageError(f"{flag} {site}: the {engine.name} release installed there cannot be read; "
                         f"give it a label: {flag} LABEL={site}")
    return label


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
    ref = engine_of(engine)
    reference = ref.engine.name_for("reference") or ref.name
    tp = conf.tp if conf.tp is not None else _default_tp(conf.launch)
    ep: Optional[int] = conf.ep if conf.ep is not None else max(1, tp // 2)
    if "ep" not in ref.engine.layout_type.field_names():
        ep = conf.ep
    stacks = stacks_of(ref.engine, conf.stacks)
    scenario_set = headline(conf, reference, tp, ep, stack_names(stacks, reference), env, sglang_sites, given_as=engine)
    if conf.tp is None:
        print(f"memprobe: no --tp given; comparing the largest layout this node supports: --tp {tp} --ep {ep}", file=sys.stderr)
    return distinct(scenario_set)


def _default_tp(launch: LaunchOptions) -> int:
    if launch.device == "cpu":
        return 4
    from memprobe.launch.options import worker_environment
    from memprobe.launch.prepare import visible_gpu_count
    from memprobe.engines.sglang.layout import SGLangLayout
    from memprobe.model.scenario import Scenario

    count, reason = visible_gpu_count(worker_environment(Scenario(name="probe", layout=SGLangLayout(tp=1)), launch))
    if count == 0:
        from memprobe.launch.no_gpu import no_gpu_hint  # only on this path

        raise UsageError(f"no NVIDIA GPU visible ({reason or 'NVML found none'}); {no_gpu_hint()}; or give --tp")
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

"""The scenarios the commands build from their options, each option checked as the user wrote it (shared by
estimate and compare)."""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Optional, Sequence

from memprobe.api.options import CompareOptions, EstimateOptions, Widths
from memprobe.errors import UsageError

if TYPE_CHECKING:
    from memprobe.engines.api import EngineRef, LayoutBase
    from memprobe.model.scenario import ScenarioSet


def engine_of(name: str) -> "EngineRef":
    """The engine and mode ``--engine name`` stands for (:class:`memprobe.engines.api.EngineRef`)."""
    from memprobe import engines

    return engines.get(name)


def widths_of(tp: Optional[int], ep: Optional[int], widths: Widths, engine: str = "memprobe") -> dict[str, Any]:
    """The layout widths given: --tp, --ep and every other width not left at its default (an engine's layout
    defaults the ones it has; one it has not, given, is refused by :meth:`Engine.layout` naming its flag)."""
    given = {field.name: getattr(widths, field.name) for field in fields(Widths)
             if field.name != "layout" and getattr(widths, field.name) != field.default}
    return {"tp": tp, "ep": ep, **given, **layout_fields(widths.layout, engine)}


def layout_fields(items: Sequence[str], engine: str) -> dict[str, Any]:
    """``--layout NAME=VALUE`` (repeatable) checked against the engine's layout: a field it has, given once, of
    its type, and one no option of memprobe's declares (those are given by their flag)."""
    if not items:
        return {}
    from memprobe.engines.api import LAYOUT_OPTION

    layout_type = engine_of(engine).engine.layout_type
    declared = {"tp", "ep"} | {field.name for field in fields(Widths)} - {"layout"}
    found: dict[str, Any] = {}
    for item in items:
        name, value = layout_type.parse_field(item)
        if name in declared or layout_type.has_own_flag(name):
            raise UsageError(f"{LAYOUT_OPTION} {item}: give {name} as {layout_type.flag_of(name)}")
        if name in found:
            raise UsageError(f"{LAYOUT_OPTION} {name} is given twice")
        found[name] = value
    return found


def layout_of(tp: int, ep: int, widths: Widths, engine: str = "memprobe") -> "LayoutBase":
    """The engine's layout from the width flags (one it does not have must stay at 1)."""
    return engine_of(engine).engine.layout(widths_of(tp, ep, widths, engine), given_as=engine)


def stack_of(engine: Any, given: Optional[str]) -> str:
    """``--stack`` as given (checked against the engine's stacks when resolved), or the engine's default stack when
    it is left out: a given stack is never swapped for another."""
    return str(engine.default_stack) if given is None else given


def stacks_of(engine: Any, given: Optional[str]) -> str:
    """``--stacks`` as given, or the engine's pair (its default stack alone if it has none) when left out."""
    return ",".join(engine.stack_pair or (engine.default_stack,)) if given is None else given


def env_preset_of(engine: Any, given: Optional[str]) -> str:
    """``--env-preset`` as given, or the engine's own preset when it is left out (vLLM's: none of NCCL's
    variables); a given preset is never swapped for another."""
    return str(engine.default_env_preset) if given is None else given


def check_choices(**given: Optional[str]) -> None:
    """--warmup, --env-preset and --engine checked as the user wrote them, before any scenario is named
    after them (a scenario name built from a bad --warmup would be what the error names)."""
    from memprobe import engines
    from memprobe.model.scenario import WARMUPS, env_presets

    allowed = {"warmup": WARMUPS, "env_preset": tuple(sorted(env_presets())), "engine": engines.names()}
    for key, value in given.items():
        if value is not None and value not in allowed[key]:  # None: left out (the engine's own)
            raise UsageError(f"--{key.replace('_', '-')} {value!r}: use one of {', '.join(allowed[key])}")


def stack_names(stacks: str, engine: str = "memprobe") -> list[str]:
    """``--stacks full,lean`` as names, each checked against the engine's stacks."""
    names = [name.strip() for name in stacks.split(",") if name.strip()]
    if not names:
        raise UsageError("--stacks needs at least one stack, e.g. full,lean")
    for name in names:
        engine_of(engine).engine.resolve_stack(name, option="--stacks")
    return names


def headline(conf: "CompareOptions | EstimateOptions", engine: str, tp: int, ep: Optional[int], names: list[str],
             env: dict[str, str], sglang_sites: Sequence[tuple[str, str]] = (), given_as: str = "") -> "ScenarioSet":
    """``given_as``: the engine as ``--engine`` named it, for the errors (``engine`` may be its reference)."""
    from memprobe.model.scenario import headline_scenarios

    preset = env_preset_of(engine_of(engine).engine, conf.env_preset)
    widths = widths_of(tp, ep, conf, engine)
    # a width the engine has not (SGLang's --dp) is refused, not dropped
    engine_of(engine).engine.layout(widths, given_as=given_as or engine)
    return headline_scenarios(engine, widths, stacks=names, baseline_tp=conf.baseline_tp,
                              env_preset=preset, env=env, warmup=conf.warmup, sglang_sites=list(sglang_sites))


def distinct(scenario_set: "ScenarioSet") -> "ScenarioSet":
    """Scenarios that would build the same groups with the same flags dropped, with a note each."""
    from memprobe.model.distinct import distinct_scenarios

    scenario_set, repeats = distinct_scenarios(scenario_set)
    for line in repeats:
        print(f"memprobe: note: {line}", file=sys.stderr)
    return scenario_set


def installed_site(engine: str, **sites: Any) -> str:
    """The site folder given for ``engine``'s installed mode (checked, absolute; "" for the importable one); a site
    flag of another engine, or one for a reproduction, is refused in one line."""
    ref = engine_of(engine)
    for flag, site in sites.items():
        if site and (not ref.installed or ref.engine.name != flag):
            raise UsageError(f"--{flag} needs --engine {flag}")
    name = ref.engine.name
    return checked_sites(**{name: sites.get(name)})[name]


def checked_sites(**sites: Any) -> dict[str, str]:
    """Per installed engine named (``sglang=SITE``, ``vllm=SITE``), its site folder checked and absolute; "" where
    none is given (the importable one)."""
    from memprobe import engines

    return {name: engines.engine(name).check_site(str(site), f"--{name} {site}") if site else ""
            for name, site in sites.items()}


def repointed(scenario_set: "ScenarioSet", **sites: Any) -> "ScenarioSet":
    """Every installed scenario of an engine given a site (``sglang=SITE``, ``vllm=SITE``) re-pointed at it:
    what a baseline update measures or estimates a baseline's scenarios with (one given no site keeps its own)."""
    from memprobe.model.scenario import with_site

    for name, site in checked_sites(**sites).items():
        if site:
            scenario_set = with_site(scenario_set, name, site)
    return scenario_set

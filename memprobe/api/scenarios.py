"""The scenarios the commands build from their options, each option checked as the user wrote it (shared by
estimate and compare)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Sequence

from memprobe.api.options import CompareOptions, EstimateOptions, Widths
from memprobe.errors import UsageError

if TYPE_CHECKING:
    from memprobe.model.layout import Layout
    from memprobe.model.scenario import ScenarioSet


def layout_of(tp: int, ep: int, widths: Widths) -> "Layout":
    from memprobe.model.layout import Layout

    return Layout(tp=tp, ep=ep, pp=widths.pp, moe_dp=widths.moe_dp, attn_dp=widths.attn_dp, attn_cp=widths.attn_cp)


def check_choices(**given: str) -> None:
    """--warmup, --env-preset and --engine checked as the user wrote them, before any scenario is named
    after them (a scenario name built from a bad --warmup would be what the error names)."""
    from memprobe.model.scenario import ENGINES, ENV_PRESETS, WARMUPS

    allowed = {"warmup": WARMUPS, "env_preset": tuple(sorted(ENV_PRESETS)), "engine": ENGINES}
    for key, value in given.items():
        if value not in allowed[key]:
            raise UsageError(f"--{key.replace('_', '-')} {value!r}: use one of {', '.join(allowed[key])}")


def stack_names(stacks: str) -> list[str]:
    """``--stacks full,lean`` as names, each checked."""
    from memprobe.model.stacks import resolve_stack

    names = [name.strip() for name in stacks.split(",") if name.strip()]
    if not names:
        raise UsageError("--stacks needs at least one stack, e.g. full,lean")
    for name in names:
        resolve_stack(name, option="--stacks")
    return names


def headline(conf: "CompareOptions | EstimateOptions", tp: int, ep: int, names: list[str], env: dict[str, str],
              sglang_sites: Sequence[tuple[str, str]] = ()) -> "ScenarioSet":
    from memprobe.model.scenario import headline_scenarios

    return headline_scenarios(tp=tp, ep=ep, stacks=names, pp=conf.pp, moe_dp=conf.moe_dp, attn_dp=conf.attn_dp,
                              attn_cp=conf.attn_cp, baseline_tp=conf.baseline_tp, env_preset=conf.env_preset, env=env,
                              warmup=conf.warmup, sglang_sites=list(sglang_sites))


def distinct(scenario_set: "ScenarioSet") -> "ScenarioSet":
    """Scenarios that would build the same groups with the same flags dropped, with a note each."""
    from memprobe.model.distinct import distinct_scenarios

    scenario_set, repeats = distinct_scenarios(scenario_set)
    for line in repeats:
        print(f"memprobe: note: {line}", file=sys.stderr)
    return scenario_set

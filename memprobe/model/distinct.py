"""Which scenarios of a comparison would measure the same thing, so that only what differs runs.

Two scenarios measure the same when they build the same groups (rank lists, aliases) with the same
communicators under the same settings: ``compare --tp 1`` (every group width 1, both stacks build
nothing), ``--tp 2 --ep 1`` (no MoE group of its own, so full = lean = the baseline) or ``--tp 2 --ep 2``
(moe_ep is the tp group and moe_tp has width 1, so full = lean). Run anyway, they would print
"lean saves" lines over identical runs without a word.

Real SGLang is never the same across installations: the ``sglang`` site is part of what is
measured, and the ``installed`` stack forces no flags, so what it builds is that release's decision.
"""

from __future__ import annotations

from typing import Any

from memprobe.model.scenario import Scenario, ScenarioSet


def measured_identity(scenario: Scenario) -> tuple[Any, ...]:
    """Everything that decides what a scenario measures (not its name or its stack's name)."""
    stack = scenario.resolved_stack
    assert stack is not None
    groups = []
    built_kinds: set[str] = set()
    for group in scenario.engine_ref.engine.plan_for(scenario.layout, stack).groups:
        communicators = stack.communicators_for(group)
        built_kinds.update(kind for kind, built in communicators.items() if built)
        groups.append((group.name, group.rank_lists, group.alias_of, tuple(sorted(communicators.items()))))
    # the engine's own settings matter only where something is built (SGLang's custom all-reduce layout)
    engine = scenario.engine_ref.engine
    impl = tuple(sorted(stack.options.items())) if any(not engine.kind(k).nccl for k in built_kinds) else None
    own_flags = not stack.flags  # ``installed``: the engine's release decides what each group builds
    return (tuple(groups), impl, scenario.env_preset, tuple(sorted(scenario.env.items())), scenario.warmup,
            scenario.engine, scenario.sglang, own_flags)


def distinct_scenarios(scenario_set: ScenarioSet) -> tuple[ScenarioSet, list[str]]:
    """The scenarios that differ (the first of each kind is kept, the baseline always), and one line
    per scenario left out saying which it would have repeated."""
    kept: list[Scenario] = []
    seen: dict[tuple[Any, ...], str] = {}
    notes: list[str] = []
    ordered = sorted(scenario_set.scenarios, key=lambda s: s.name != scenario_set.baseline)
    for scenario in ordered:
        identity = measured_identity(scenario)
        if identity in seen:
            notes.append(f"{scenario.name} would measure the same as {seen[identity]} (same groups, rank lists and "
                         f"communicators on {scenario.layout.flags()}); not run")
            continue
        seen[identity] = scenario.name
        kept.append(scenario)
    kept.sort(key=lambda s: [x.name for x in scenario_set.scenarios].index(s.name))
    return ScenarioSet(scenarios=tuple(kept), baseline=scenario_set.baseline), notes

"""What every report shows, computed once from a :class:`Comparison` (integers only, no formatting).

* :func:`plan_of`: a run's groups as recorded in ``run.json`` (what actually ran).
* :func:`summarize`: per scenario, per rank: CUDA context, world, init bytes per group,
  first use, totals; the worst rank (largest total after first use) and deltas vs the baseline.
* :func:`headline_groups`: which groups get a column, and which are folded because they
  are width-1 singletons that added nothing on any rank.
* :func:`lean_savings`: full-vs-lean pairs with the same layout and what lean saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from memprobe.analysis.attribution import (
    CONTEXT,
    TOTAL_AFTER_FIRST_USE,
    TOTAL_AFTER_INIT,
    UNATTRIBUTED,
    WORLD,
    Spread,
    rank_components,
    skipped_keys,
    spread,
    subtract,
)
from memprobe import engines
from memprobe.engines.api import LayoutBase
from memprobe.model.rank_table import rank_table
from memprobe.model.records import Run
from memprobe.model.comparison import Comparison, ScenarioRun


@dataclass(frozen=True)
class GroupInfo:
    """One group of a run's plan, as ``run.json`` recorded it."""

    name: str
    width: int
    alias_of: str | None
    communicators: dict[str, bool] = field(default_factory=dict)

    @property
    def is_alias(self) -> bool:
        return self.alias_of is not None

    def builds(self, communicator: str) -> bool:
        return bool(self.communicators.get(communicator, False))


def installed_built(run: Run) -> dict[str, dict[str, bool]]:
    """For a run of an installed engine: per group, which communicators it constructed on any rank (its ranks'
    recorded decisions; the plan's flags are the stack's, which for ``installed`` are the engine's own)."""
    ref = engines.get(run.record.engine, where=f"run {run.record.run_id}: engine")
    return ref.engine.built_by_run(run) if ref.installed else {}


def plan_of(run: Run) -> list[GroupInfo]:
    groups = []
    real = installed_built(run)
    for entry in run.record.plan:
        groups.append(
            GroupInfo(
                name=entry.name,
                width=entry.width,
                alias_of=entry.alias_of,
                communicators=real.get(entry.name) or dict(entry.communicators),
            )
        )
    return groups


def layout_of(run: Run) -> LayoutBase | None:
    try:
        return engines.get(run.record.engine).engine.layout_type(**run.record.layout)
    except Exception:  # a hand-edited or foreign record: show what we can
        return None


ESTIMATED_MEMORY = "ESTIMATED GPU memory (NCCL rules + calibration, not measured)"


def estimated_memory(run: Run) -> str:
    """ESTIMATED_MEMORY naming the NCCL whose rules made it, and the calibration's NCCL where that is another."""
    basis = run.record.environment.get("estimate") or {}
    rules, calibrated = basis.get("rules_nccl"), basis.get("nccl")
    if not rules:
        return ESTIMATED_MEMORY
    other = f" of NCCL {calibrated}: another NCCL" if calibrated and calibrated != rules else ""
    return f"ESTIMATED GPU memory (NCCL {rules} rules + calibration{other}, not measured)"


def measured_memory(runs: list[Run]) -> str:
    """What the readings are, in words: GPU memory (NVML), host memory (RSS) with --device cpu, or an estimate."""
    kinds = {estimated_memory(run) if run.record.source == "estimated" else
             "host memory (RSS)" if run.record.device == "cpu" else "GPU memory" for run in runs}
    return kinds.pop() if len(kinds) == 1 else "memory (" + " and ".join(sorted(kinds)) + " mixed)"


def layout_flags(run: Run) -> str:
    layout = layout_of(run)
    if layout is not None:
        return layout.flags()
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in run.record.layout.items())


def sum_known(values: list[int | None]) -> int | None:
    """Sum, or ``None`` if any part is unknown (an unknown part makes the sum unknown)."""
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


@dataclass
class RankSummary:
    """One rank of one scenario. ``group_init[name]`` is ``None`` for aliases and unknown values."""

    rank: int
    parts: dict[str, int | None]
    cuda_context: int | None
    world: int | None
    group_init: dict[str, int | None]
    first_use: int | None
    unattributed: int | None
    total_after_init: int | None
    total_after_first_use: int | None
    delta_after_init: int | None = None
    delta_after_first_use: int | None = None
    skipped: set[str] = field(default_factory=set)  # component keys whose step was skipped (built nothing)


@dataclass
class ScenarioSummary:
    item: ScenarioRun
    plan: list[GroupInfo]
    ranks: dict[int, RankSummary]
    worst_rank: int | None
    total_spread: Spread
    is_baseline: bool = False
    distinct: list[RankSummary] = field(default_factory=list)  # the first rank of each distinct readings list
    # ranks that read alike here and whose baseline ranks read alike too: one row each in a collapsed per-rank table
    alike: list[list[int]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.item.scenario.name

    @property
    def worst(self) -> RankSummary | None:
        return None if self.worst_rank is None else self.ranks[self.worst_rank]

    def group(self, name: str) -> GroupInfo | None:
        for group in self.plan:
            if group.name == name:
                return group
        return None


def _rank_summary(rank: int, parts: dict[str, int | None], plan: list[GroupInfo]) -> RankSummary:
    group_init: dict[str, int | None] = {}
    for group in plan:
        if group.name == WORLD or group.is_alias:
            continue
        group_init[group.name] = parts.get(f"{group.name}/init")
    # Every built group's first use (world included); one missing (run stopped early) makes the sum unknown.
    keys = [f"{group.name}/first_use" for group in plan if not group.is_alias]
    keys += [key for key in parts if key.endswith("/first_use") and key not in keys]
    if parts.get(TOTAL_AFTER_FIRST_USE) is not None:  # a finished run: a group it has no reading of was never built
        keys = [key for key in keys if key in parts]  # (SGLang 0.5.10.post1 and 0.5.11 build no self_pp)
    first_use = sum_known([parts.get(key) for key in keys]) if keys else None
    return RankSummary(
        rank=rank,
        parts=parts,
        cuda_context=parts.get(CONTEXT),
        world=parts.get(WORLD),
        group_init=group_init,
        first_use=first_use,
        unattributed=parts.get(UNATTRIBUTED),
        total_after_init=parts.get(TOTAL_AFTER_INIT),
        total_after_first_use=parts.get(TOTAL_AFTER_FIRST_USE),
    )


def choose_worst_rank(ranks: dict[int, RankSummary]) -> int | None:
    """The rank with the largest total after first use; after init when no rank finished; else the first rank."""
    for attribute in ("total_after_first_use", "total_after_init"):
        worst = spread({rank: getattr(summary, attribute) for rank, summary in ranks.items()}).worst_rank
        if worst is not None:
            return worst
    return min(ranks) if ranks else None


def _rank_templates(run: Run, plan: list[GroupInfo]) -> dict[int, RankSummary]:
    """rank -> its summary, computed once per rank class (:mod:`memprobe.model.rank_table`): the ranks of one class
    share one summary object here; :func:`summarize` gives every rank its own."""
    table = rank_table(run)

    def template(readings: list) -> RankSummary:
        summary = _rank_summary(readings[0].rank if readings else 0, rank_components(readings), plan)
        summary.skipped = skipped_keys(readings)
        return summary

    per_class = [rank_class.derived("rank_summary", template) for rank_class in table.classes]
    return {rank: per_class[index] for rank, index in table.class_of.items()}


def _own_summaries(templates: dict[int, RankSummary], reference: dict[int, RankSummary] | None) -> dict[int, RankSummary]:
    """Every rank its own summary (its rank number, its deltas against the same rank of ``reference``).

    Deltas are worked out once per (summary, reference summary) pair, and each rank's summary is one dict copy
    (``dataclasses.replace`` per rank costs more than the summaries themselves on 4096 ranks); never changed in place.
    """
    deltas: dict[tuple[int, int], tuple[int | None, int | None]] = {}
    ranks: dict[int, RankSummary] = {}
    for rank, template in templates.items():
        base = reference.get(rank) if reference is not None else None
        fields = {**template.__dict__, "rank": rank}
        if base is not None:
            key = (id(template), id(base))
            if key not in deltas:
                deltas[key] = (subtract(template.total_after_init, base.total_after_init),
                               subtract(template.total_after_first_use, base.total_after_first_use))
            fields["delta_after_init"], fields["delta_after_first_use"] = deltas[key]
        summary = object.__new__(RankSummary)
        summary.__dict__ = fields
        ranks[rank] = summary
    return ranks


def summarize(comparison: Comparison) -> list[ScenarioSummary]:
    """Every scenario of ``comparison`` in its order, deltas filled in against the baseline.

    The worst-rank delta compares worst rank with the baseline's worst rank; a per-rank delta
    compares with the same rank of the baseline (``None`` where the baseline has no such rank).
    """
    plans = [plan_of(item.run) for item in comparison.runs]
    templates = [_rank_templates(item.run, plan) for item, plan in zip(comparison.runs, plans)]
    reference = next((ranks for item, ranks in zip(comparison.runs, templates)
                      if item.scenario.name == comparison.baseline), None)
    summaries = []
    for item, plan, rank_templates in zip(comparison.runs, plans, templates):
        ranks = _own_summaries(rank_templates, reference)
        summaries.append(
            ScenarioSummary(
                item=item,
                plan=plan,
                ranks=ranks,
                worst_rank=choose_worst_rank(ranks),
                total_spread=spread({rank: s.total_after_first_use for rank, s in ranks.items()}),
                is_baseline=item.scenario.name == comparison.baseline,
                distinct=_first_of_each(rank_templates, ranks),
                alike=_alike(rank_templates, reference),
            )
        )
    return summaries


def _alike(templates: dict[int, RankSummary], reference: dict[int, RankSummary] | None) -> list[list[int]]:
    """Ranks grouped by (their summary, the baseline's summary of the same rank), in order of their first rank."""
    groups: dict[tuple[int, int], list[int]] = {}
    for rank, template in templates.items():
        base = reference.get(rank) if reference is not None else None
        groups.setdefault((id(template), id(base)), []).append(rank)
    return list(groups.values())


def _first_of_each(templates: dict[int, RankSummary], ranks: dict[int, RankSummary]) -> list[RankSummary]:
    """The first rank's summary of every distinct readings list."""
    first: dict[int, RankSummary] = {}
    for rank, template in templates.items():
        first.setdefault(id(template), ranks[rank])
    return list(first.values())


def worst_deltas(summary: ScenarioSummary, baseline: ScenarioSummary | None) -> tuple[int | None, int | None]:
    """(after init, after first use) of the worst rank minus the baseline's worst rank."""
    worst = summary.worst
    reference = baseline.worst if baseline is not None else None
    if worst is None or reference is None:
        return None, None
    return (
        subtract(worst.total_after_init, reference.total_after_init),
        subtract(worst.total_after_first_use, reference.total_after_first_use),
    )


def baseline_of(summaries: list[ScenarioSummary]) -> ScenarioSummary | None:
    return next((summary for summary in summaries if summary.is_baseline), None)


def _engine_names(summaries: list[ScenarioSummary]) -> list[str]:
    return [summary.item.run.record.engine for summary in summaries]


def highlighted_groups(summaries: list[ScenarioSummary]) -> tuple[str, ...]:
    """The groups the scenarios' engines single out (SGLang: its MoE groups): their own table and lines."""
    return engines.highlighted_groups(_engine_names(summaries))


def _order_key(summaries: list[ScenarioSummary]) -> Callable[[str], tuple[int, str]]:
    """Sort key of group names: the creation order of the scenarios' engines, unknown names last."""
    order = engines.group_order(_engine_names(summaries))
    return lambda name: (order.index(name), "") if name in order else (len(order), name)


def built_group_names(summaries: list[ScenarioSummary]) -> list[str]:
    """Groups other than ``world`` that some scenario builds (not an alias), in the engines' creation order."""
    names = {group.name for summary in summaries for group in summary.plan if not group.is_alias and group.name != WORLD}
    return sorted(names, key=_order_key(summaries))


def headline_groups(summaries: list[ScenarioSummary]) -> tuple[list[str], list[str]]:
    """(groups with a column, groups folded away).

    A built group is folded only when it is a width-1 singleton without communicators in every
    scenario and added 0 bytes wherever it was measured (a rank that stopped early leaves it
    unknown, and the totals show n/a for that rank anyway); anything with a communicator,
    width > 1 or a non-zero value keeps its column.
    """
    shown: list[str] = []
    folded: list[str] = []
    for name in built_group_names(summaries):
        keep = False
        for summary in summaries:
            group = summary.group(name)
            if group is None or group.is_alias:
                continue
            if group.width > 1 or any(group.communicators.values()):
                keep = True
                break
            if any(rank.group_init.get(name) not in (0, None) or rank.parts.get(f"{name}/first_use") not in (0, None)
                   for rank in summary.distinct):
                keep = True
                break
        (shown if keep else folded).append(name)
    return shown, folded


def alias_text(group: GroupInfo | None) -> str | None:
    """``"= tp"`` for an alias group (no memory of its own), ``None`` otherwise."""
    if group is not None and group.alias_of is not None:
        return f"= {group.alias_of}"
    return None


def aliases(summaries: list[ScenarioSummary]) -> list[str]:
    """``"attention_tp = tp"`` entries in group order; where scenarios differ, each entry names the scenarios
    it holds for (``"moe_tp = tp (tp4)"``), so the note is true of every scenario it speaks of."""
    holders: dict[str, list[str]] = {}
    order: dict[str, str] = {}
    for summary in summaries:
        for group in summary.plan:
            if group.alias_of is not None:
                text = f"{group.name} = {group.alias_of}"
                holders.setdefault(text, []).append(summary.name)
                order.setdefault(text, group.name)
    every = len(summaries)
    group_key = _order_key(summaries)
    return [text if len(holders[text]) == every else f"{text} ({', '.join(holders[text])})"
            for text in sorted(holders, key=lambda text: group_key(order[text]))]


def any_unattributed(summaries: list[ScenarioSummary]) -> bool:
    return any(rank.unattributed != 0 for summary in summaries for rank in summary.distinct)


# --------------------------------------------------------------------------- full vs lean


@dataclass
class LeanSaving:
    """What the lean stack saves against the full stack for one layout (full minus lean, per rank)."""

    full: ScenarioSummary
    lean: ScenarioSummary
    after_first_use: Spread
    after_init: Spread
    moe_init: dict[str, tuple[list[int | None], list[int | None]]]  # group -> (full per rank, lean per rank)
    moe_note: dict[str, str]  # group -> "alias of tp" / "width 1" when it has no init cost of its own
    real_sglang: bool = False  # two real SGLang installations (before / after PR #22515), not two stacks

    @property
    def flags(self) -> str:
        return layout_flags(self.full.item.run)


def _stack_parts(name: str) -> tuple[str, str]:
    base, _, variant = name.partition(":")
    return base, variant


def _saving(full: ScenarioSummary, lean: ScenarioSummary, real_sglang: bool = False) -> LeanSaving:
    """What ``lean`` saves against ``full`` (same layout): totals per rank and each MoE group's init cost."""
    common = sorted(set(full.ranks) & set(lean.ranks))
    moe_init: dict[str, tuple[list[int | None], list[int | None]]] = {}
    notes: dict[str, str] = {}
    for name in highlighted_groups([full]):
        group = full.group(name)
        if group is None:
            continue
        if group.is_alias:
            notes[name] = f"alias of {group.alias_of}"
            continue
        if group.width == 1:
            notes[name] = "width 1"
        moe_init[name] = (
            [full.ranks[rank].group_init.get(name) for rank in sorted(full.ranks)],
            [lean.ranks[rank].group_init.get(name) for rank in sorted(lean.ranks)],
        )
    return LeanSaving(
        full=full,
        lean=lean,
        after_first_use=spread({r: subtract(full.ranks[r].total_after_first_use, lean.ranks[r].total_after_first_use) for r in common}),
        after_init=spread({r: subtract(full.ranks[r].total_after_init, lean.ranks[r].total_after_init) for r in common}),
        moe_init=moe_init,
        moe_note=notes,
        real_sglang=real_sglang,
    )


def sglang_builds_moe_communicators(summary: ScenarioSummary) -> bool | None:
    """For an installed engine's run with its own flags (stack ``installed``): whether it constructed a
    communicator on a highlighted group (SGLang's ``moe_ep``/``moe_tp``: True before its PR #22515), as its ranks
    recorded; ``None`` when the layout has no highlighted group of its own wider than one rank (nothing to save) or
    it is no such run."""
    scenario = summary.item.scenario
    if not scenario.engine_ref.installed or scenario.stack != "installed":
        return None
    recorded = installed_built(summary.item.run)
    wide = [name for name in highlighted_groups([summary])
            if (group := summary.group(name)) is not None and not group.is_alias and group.width > 1]
    if not wide or not all(name in recorded for name in wide):
        return None
    return any(built for name in wide for built in recorded[name].values())


def lean_savings(summaries: list[ScenarioSummary]) -> list[LeanSaving]:
    """Each (full, lean) pair with the same layout and custom all-reduce variant, in comparison order; then
    each pair of installations of an engine with the same layout where one built communicators on its highlighted
    groups and the other did not (decided from what the runs recorded, not from labels or versions)."""
    savings = []
    for full in summaries:
        pair = full.item.scenario.engine_ref.engine.stack_pair
        full_base, full_variant = _stack_parts(full.item.scenario.stack)
        if pair is None or full_base != pair[0]:
            continue
        for lean in summaries:
            lean_base, lean_variant = _stack_parts(lean.item.scenario.stack)
            if lean_base != pair[1] or lean_variant != full_variant:
                continue
            if (lean.item.scenario.engine, lean.item.scenario.sglang) != (full.item.scenario.engine, full.item.scenario.sglang):
                continue
            if lean.item.scenario.layout == full.item.scenario.layout:
                savings.append(_saving(full, lean))
    builds = {id(s): sglang_builds_moe_communicators(s) for s in summaries}
    for before in (s for s in summaries if builds[id(s)] is True):
        for after in (s for s in summaries if builds[id(s)] is False):
            if after.item.scenario.layout == before.item.scenario.layout:
                savings.append(_saving(before, after, real_sglang=True))
    return savings


def moe_table_needed(summaries: list[ScenarioSummary]) -> bool:
    """True when some scenario builds moe_ep or moe_tp as a group of its own with more than one rank."""
    for summary in summaries:
        for name in highlighted_groups([summary]):
            group = summary.group(name)
            if group is not None and not group.is_alias and group.width > 1:
                return True
    return False


def moe_cell(summary: ScenarioSummary, group_name: str, step: str) -> tuple[str | None, int | None]:
    """(a word instead of a number, or None; the worst rank's bytes) for the MoE communicator table."""
    group = summary.group(group_name)
    if group is None:
        return "n/a", None
    if group.is_alias:
        return f"= {group.alias_of}", None
    if group.width == 1:
        return "width 1", None
    worst = summary.worst
    key = f"{group_name}/{step}"
    value = None if worst is None else worst.parts.get(key)
    if step in group.communicators and not group.builds(step) and value == 0:
        return "off", None
    if worst is not None and key in worst.skipped:  # e.g. --device cpu builds no GPU communicator
        return "skipped", None
    return None, value


__all__ = [
    "GroupInfo",
    "LeanSaving",
    "RankSummary",
    "ScenarioSummary",
    "aliases",
    "any_unattributed",
    "baseline_of",
    "built_group_names",
    "headline_groups",
    "highlighted_groups",
    "lean_savings",
    "layout_flags",
    "measured_memory",
    "moe_cell",
    "moe_table_needed",
    "plan_of",
    "summarize",
    "worst_deltas",
]

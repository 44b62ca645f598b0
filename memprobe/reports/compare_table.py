"""The headline comparison: one row per scenario (worst rank) or per scenario and rank.

The cells are computed once here (:func:`headline`, :func:`lean_lines`, :func:`moe_table`) and
drawn twice: as a Rich table (:func:`render_comparison`) and as GitHub Markdown
(:func:`memprobe.reports.exports.render_markdown`), so both always say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table

from memprobe import engines
from memprobe.reports._format import console_for, files_line, natural_width, print_table
from memprobe.reports.failed_builds import comparison_notes as failed_notes

from memprobe.analysis.attribution import CONTEXT
from memprobe.units import NA, UNIT, mib, mib_range
from memprobe.reports._model import (
    highlighted_groups,
    LeanSaving,
    RankSummary,
    ScenarioSummary,
    alias_text,
    aliases,
    any_unattributed,
    baseline_of,
    headline_groups,
    layout_flags,
    lean_savings,
    measured_memory,
    moe_cell,
    moe_table_needed,
    summarize,
    worst_deltas,
)
from memprobe.model.comparison import Comparison
from memprobe.model.rank_table import rank_text
from memprobe.model.records import RunStatus

BASELINE_MARK = "base"


@dataclass
class TextTable:
    """Headers and rows of strings; ``numeric[i]`` says whether column ``i`` is right-aligned."""

    title: str
    headers: list[str]
    numeric: list[bool]
    rows: list[list[str]] = field(default_factory=list)
    row_groups: list[int] = field(default_factory=list)  # index of the scenario each row belongs to


def _scenario_label(summary: ScenarioSummary) -> str:
    label = summary.name
    if summary.item.run.record.status != RunStatus.COMPLETE:
        label += f" ({summary.item.run.record.status})"
    return label


def _stack_and_settings(summary: ScenarioSummary) -> str:
    """The stack, plus what else sets this scenario apart (without it, NCCL knob scenarios
    all read "--tp 4 --ep 2, full"): its --env settings, a non-default preset or warm-up."""
    scenario = summary.item.scenario
    parts = [scenario.stack]
    parts += [f"{key}={value}" for key, value in sorted(scenario.env.items())]
    if scenario.env_preset != next(iter(scenario.engine_ref.engine.env_presets), ""):  # not its engine's own preset
        parts.append(f"env preset {scenario.env_preset}")
    if scenario.warmup != "tiny":
        parts.append(f"warmup {scenario.warmup}")
    return ", ".join(parts)


def _group_cell(summary: ScenarioSummary, rank: RankSummary | None, name: str) -> str:
    group = summary.group(name)
    if group is None:
        return NA
    text = alias_text(group)
    if text is not None:
        return text
    return mib(None if rank is None else rank.group_init.get(name))


@dataclass(frozen=True)
class _Columns:
    """Which optional columns the headline table has."""

    shown: list[str]  # groups with an init column
    context: bool  # --device cpu skips the CUDA context on every rank: no column rather than a 0
    unattributed: bool
    per_rank: bool
    all_ranks: bool = False  # per_rank: every rank its own row, even where ranks read alike


def _collapsed(summaries: list[ScenarioSummary], columns: _Columns) -> bool:
    """Whether a per-rank table puts ranks that read alike into one row (some row then holds several ranks)."""
    return columns.per_rank and not columns.all_ranks and any(len(ranks) > 1 for s in summaries for ranks in s.alike)


def headline(comparison: Comparison, *, per_rank: bool = False, all_ranks: bool = False,
             summaries: list[ScenarioSummary] | None = None) -> tuple[TextTable, list[str]]:
    """The headline table and the notes that go under it (``summaries``: the comparison's, if already made).

    ``per_rank``: a row per rank, ranks that read alike (same readings, and their baseline ranks alike) in one row
    with their rank list unless ``all_ranks``."""
    summaries = summaries if summaries is not None else summarize(comparison)
    baseline = baseline_of(summaries)
    shown, folded = headline_groups(summaries)
    columns = _Columns(shown=shown, per_rank=per_rank, all_ranks=all_ranks, unattributed=any_unattributed(summaries),
                       context=not all(CONTEXT in rank.skipped for summary in summaries for rank in summary.distinct))
    headers = _headline_headers(columns)
    mode = ("one row per rank class (ranks that read alike)" if _collapsed(summaries, columns) else
            "one row per rank" if per_rank else "worst rank (largest total after first use)")
    memory = measured_memory([summary.item.run for summary in summaries])
    title = f"comparison {comparison.comparison_id}: {memory} per rank, {mode}, {UNIT} = 2^20 bytes"
    table = TextTable(title=title, headers=headers, numeric=[False, False, False] + [True] * (len(headers) - 3))
    for index, summary in enumerate(summaries):
        for rank_text, values, deltas in _entries(summary, baseline, per_rank, columns.all_ranks):
            table.rows.append(_headline_row(summary, rank_text, values, deltas, columns))
            table.row_groups.append(index)
    return table, _headline_notes(comparison, summaries, folded, columns)


def _headline_headers(columns: _Columns) -> list[str]:
    headers = ["scenario", "layout", "stack", "rank" if columns.per_rank else "worst rank"]
    headers += [f"CUDA context {UNIT}"] if columns.context else []
    headers += [f"world {UNIT}"]
    headers += [f"{name} init {UNIT}" for name in columns.shown]
    headers += [f"first use {UNIT}"]
    headers += [f"between steps {UNIT}"] if columns.unattributed else []
    headers += [f"after init {UNIT}", f"after first use {UNIT}", f"Δ after init {UNIT}", f"Δ after first use {UNIT}"]
    return headers + ([] if columns.per_rank else [f"rank spread {UNIT}"])


def _entries(summary: ScenarioSummary, baseline: ScenarioSummary | None, per_rank: bool,
             all_ranks: bool = False) -> list[tuple[str, Any, tuple]]:
    """``(rank text, rank summary, (Δ after init, Δ after first use))`` per row of one scenario."""
    if not per_rank:
        rank = summary.worst_rank
        return [(NA if rank is None else f"{rank} of {len(summary.ranks)}", summary.worst, worst_deltas(summary, baseline))]
    rows = [[rank] for rank in sorted(summary.ranks)] if all_ranks else sorted(summary.alike, key=lambda ranks: ranks[0])
    entries = []
    for ranks in rows:
        shown = ranks[0] if summary.worst_rank not in ranks else summary.worst_rank  # the worst rank's values
        values = summary.ranks[shown]
        text = rank_text(ranks) + (" (worst)" if summary.worst_rank in ranks and len(summary.ranks) > 1 else "")
        entries.append((text, values, (values.delta_after_init, values.delta_after_first_use)))
    return entries or [(NA, None, (None, None))]


def _headline_row(summary: ScenarioSummary, rank_text: str, values: Any, deltas: tuple, columns: _Columns) -> list[str]:
    def cell(attribute: str) -> str:
        return mib(getattr(values, attribute) if values else None)

    row = [_scenario_label(summary), layout_flags(summary.item.run), _stack_and_settings(summary), rank_text]
    row += [cell("cuda_context")] if columns.context else []
    row += [cell("world")]
    row += [_group_cell(summary, values, name) for name in columns.shown]
    row += [cell("first_use")]
    row += [cell("unattributed")] if columns.unattributed else []
    row += [cell("total_after_init"), cell("total_after_first_use")]
    if summary.is_baseline:
        row += [BASELINE_MARK, BASELINE_MARK]
    else:
        row += [mib(deltas[0], signed=True), mib(deltas[1], signed=True)]
    return row + ([] if columns.per_rank else [mib(summary.total_spread.spread)])


def _headline_notes(comparison: Comparison, summaries: list[ScenarioSummary], folded: list[str], columns: _Columns) -> list[str]:
    kinds = engines.kinds(item.run.record.engine for item in comparison.runs)
    notes = [
        f"<group> init = {' + '.join(['groups created', *(kind.label for kind in kinds)])}; first use = the first "
        "collective on every group",
    ]
    if columns.per_rank:
        notes.append(f"Δ = this rank minus the same rank of the baseline ({comparison.baseline})")
    else:
        notes.append(
            f"Δ = worst rank minus the baseline's worst rank ({comparison.baseline}); "
            "rank spread = largest minus smallest total after first use across ranks"
        )
    if _collapsed(summaries, columns):
        notes.append("a row's ranks read alike (the same readings, and the same in the baseline); "
                     "--all-ranks shows one row per rank")
    notes += failed_notes([(summary.name, summary.item.run) for summary in summaries])
    if folded:
        how = "estimated" if all(item.run.record.source == "estimated" for item in comparison.runs) else "measured"
        notes.append(f"width-1 groups, 0 {UNIT} wherever {how}, not shown: {', '.join(folded)}")
    if not columns.context:
        notes.append("CUDA context: skipped (--device cpu), not shown")
    alias_lines = aliases(summaries)
    if alias_lines:
        notes.append(f"aliases (same group object, no memory of their own): {', '.join(alias_lines)}")
    return notes + _environment_notes(summaries)


def _environment_notes(summaries: list[ScenarioSummary]) -> list[str]:
    """One line naming the GPU, device and sampling mode when all scenarios agree; a warning when they do not."""
    described = {}
    for summary in summaries:
        record = summary.item.run.record
        parts = [f"device {record.device}"]
        gpu = record.environment.get("gpu_model")
        if gpu:
            parts.append(f"GPU {gpu}")
        mode = record.environment.get("sampling_mode")
        if mode:
            parts.append(f"sampling {mode}")
        described[summary.name] = ", ".join(parts)
    distinct = sorted(set(described.values()))
    if len(distinct) == 1:
        return [distinct[0]]
    return ["warning: scenarios were measured differently: " + "; ".join(f"{name}: {text}" for name, text in described.items())]


def _spread_text(values) -> str:  # values: attribution.Spread
    if values.minimum is None:
        return NA
    return f"min {mib(values.minimum)} / median {mib(values.median)} / max {mib(values.maximum)} {UNIT}"


def lean_lines(comparison: Comparison, summaries: list[ScenarioSummary] | None = None) -> list[list[str]]:
    """Per full/lean pair with the same layout, the lines saying what lean saves (full minus lean, per rank)."""
    blocks = []
    for saving in lean_savings(summaries if summaries is not None else summarize(comparison)):
        engine = saving.full.item.scenario.engine_ref.engine
        full, lean = engine.stack_pair or ("full", "lean")
        # the stacks themselves (vllm:0.11 vs shared-ep:0.11), not the pair's base names
        details = _lean_details(saving, saving.full.item.scenario.stack, saving.lean.item.scenario.stack)
        blocks.append(
            [
                f"{lean} saves on {saving.flags} ({f'real {engine.label}: ' if saving.real_sglang else ''}"
                f"{saving.full.name} minus {saving.lean.name}), per rank:",
                f"after first use {_spread_text(saving.after_first_use)}; after init {_spread_text(saving.after_init)}",
                *([details] if details else []),
            ]
        )
        on_gpu = [engine.kind(name).label for name in engine.gpu_kinds]
        if saving.full.item.run.record.device == "cpu" and on_gpu:  # honest about what a CPU difference is
            blocks[-1].append(f"--device cpu builds no {' or '.join(on_gpu)}: {full} and {lean} differ here only "
                              "by host-memory noise")
    return blocks


def _lean_details(saving: LeanSaving, full: str, lean: str) -> str | None:
    """Each highlighted group's init cost in both stacks; None for an engine that highlights none."""
    parts = []
    highlighted = highlighted_groups([saving.full])
    if not highlighted:
        return None
    for name in highlighted:
        if name in saving.moe_init:
            full_values, lean_values = saving.moe_init[name]
            text = f"{name} init {mib_range(full_values)} {full} vs {mib_range(lean_values)} {lean}"
            if name in saving.moe_note:
                text += f" ({saving.moe_note[name]})"
        elif name in saving.moe_note:
            text = f"{name}: {saving.moe_note[name]}"
        else:
            continue
        parts.append(text)
    if parts:
        return "; ".join(parts)
    scenario = saving.full.item.scenario
    hint = scenario.engine_ref.engine.no_highlighted_groups_hint(scenario.layout)
    return "no MoE groups in this layout" + (f": {hint}" if hint else "")


def _moe_steps(summaries: list[ScenarioSummary]) -> list[tuple[str, str]]:
    """The highlighted groups' columns: each communicator kind of the scenarios' engines, then first use."""
    kinds = engines.kinds([summary.item.run.record.engine for summary in summaries])
    return [*((kind.name, kind.label) for kind in kinds), ("first_use", "first use")]


def moe_table(comparison: Comparison, summaries: list[ScenarioSummary] | None = None) -> TextTable | None:
    """Per MoE group and communicator, the worst rank's bytes; ``None`` when no scenario has a MoE group of its own."""
    summaries = summaries if summaries is not None else summarize(comparison)
    if not moe_table_needed(summaries):
        return None
    headers = ["scenario", "worst rank"]
    groups, steps = highlighted_groups(summaries), _moe_steps(summaries)
    for group in groups:
        headers += [f"{group} {label} {UNIT}" for _, label in steps]
    rows = []
    for summary in summaries:
        row = [_scenario_label(summary), NA if summary.worst_rank is None else str(summary.worst_rank)]
        for group in groups:
            for step, _ in steps:
                word, value = moe_cell(summary, group, step)
                row.append(word if word is not None else mib(value))
        rows.append(row)
    table = TextTable(title=f"MoE groups per communicator, worst rank, {UNIT} ({_moe_legend(summaries, rows)})",
                      headers=headers, numeric=[False] + [True] * (len(headers) - 1))
    for index, row in enumerate(rows):
        table.rows.append(row)
        table.row_groups.append(index)
    return table


def _moe_legend(summaries: list[ScenarioSummary], rows: list[list[str]]) -> str:
    """The MoE table's words, each said where a cell uses it."""
    words = {cell for row in rows for cell in row[2:]}
    on_cpu = any(summary.item.run.record.device == "cpu" for summary in summaries)
    parts = ["off: not built by the stack"]
    if "skipped" in words or on_cpu:
        parts.append("skipped: not built in this run (" + ("--device cpu, or " if on_cpu else "")
                     + "a rule of the engine's or a communicator shared with another group; the record says why per rank: "
                     "run.json, --json)")
    parts += ["= tp: alias of tp", "width 1: singleton"]
    if NA in words:
        parts.append(f"{NA}: the scenario has no such group")
    return "; ".join(parts)


# --------------------------------------------------------------------------- Rich


def _stacked_header(header: str, width: int = 7) -> str:
    """``"Δ after first use MiB"`` -> ``"Δ after\\nfirst\\nuse\\nMiB"``: narrow columns, the unit on its own line."""
    unit = header.endswith(f" {UNIT}")
    words = (header[: -len(UNIT) - 1] if unit else header).split()
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    if unit:
        lines.append(UNIT)
    return "\n".join(lines)


def _rich_table(table: TextTable, *, merge_scenario: bool) -> Table:
    """Draw ``table`` with Rich. ``merge_scenario`` puts layout and stack under the scenario name."""
    rich_table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    skip = 3 if merge_scenario else 1
    firsts = []
    for row in table.rows:
        firsts.append(f"{row[0]}\n{row[1]}, {row[2]}" if merge_scenario else row[0])
    name_width = max([len(line) for text in firsts for line in text.splitlines()] + [len(table.headers[0])])
    rich_table.add_column(table.headers[0], min_width=name_width, no_wrap=True)
    for header, is_number in zip(table.headers[skip:], table.numeric[skip:]):
        rich_table.add_column(_stacked_header(header), justify="right" if is_number else "left", no_wrap=True)
    previous = None
    # a rule between scenarios when a scenario takes several lines (per-rank rows, or name over layout)
    sections = merge_scenario or len(set(table.row_groups)) < len(table.row_groups)
    for group, first, row in zip(table.row_groups, firsts, table.rows):
        if group == previous:
            first = ""  # per-rank rows: name the scenario once
        elif previous is not None and sections:
            rich_table.add_section()
        rich_table.add_row(first, *row[skip:])
        previous = group
    return rich_table


COMPARISON_FILES = (("comparison.json", "comparison.json"), (None, "launch*.json"), (None, "torchrun*.log"))

# Columns given up, in this order, when a table is wider than the terminal (with all of them,
# every line wraps at 80 or 100 columns); files and pipes get the wide default and keep them all.
# Then each engine's own group columns (Engine.narrow_table_drops).
DROP_ORDER: tuple[str, ...] = ("between steps", "Δ after init", "rank spread", "CUDA context", "world",
                               "after init", "first use")


def headline_drop_order(comparison: Comparison) -> tuple[str, ...]:
    """Header prefixes of the headline table's columns, in the order a too-wide table gives them up."""
    names = [item.run.record.engine for item in comparison.runs]
    return DROP_ORDER + tuple(f"{group} init" for group in engines.narrow_table_drops(names))


def highlighted_drop_order(summaries: list[ScenarioSummary]) -> tuple[str, ...]:
    """Header prefixes of the highlighted groups' table that a too-wide one gives up: first-use columns of the
    groups its engines name (Engine.narrow_highlighted_groups)."""
    names = [summary.item.run.record.engine for summary in summaries]
    return tuple(f"{group} first use" for group in engines.narrow_highlighted_drops(names))


def _without_column(table: TextTable, index: int) -> TextTable:
    return TextTable(title=table.title, headers=table.headers[:index] + table.headers[index + 1:],
                     numeric=table.numeric[:index] + table.numeric[index + 1:],
                     rows=[row[:index] + row[index + 1:] for row in table.rows], row_groups=list(table.row_groups))


def fit_table(table: TextTable, width: int, drop_order: tuple[str, ...], *, merge_scenario: bool) -> tuple[Table, list[str]]:
    """The Rich table of ``table`` within ``width`` characters, leaving out columns in ``drop_order``
    (header prefixes) until it fits; returns it with the headers left out."""
    dropped: list[str] = []
    pending = list(drop_order)
    while True:
        drawn = _rich_table(table, merge_scenario=merge_scenario)
        if natural_width(drawn) <= width or not pending:
            return drawn, dropped
        prefix = pending.pop(0)
        for index, header in enumerate(table.headers):
            if header.startswith(prefix) and index > 0:
                dropped.append(header.replace(f" {UNIT}", ""))
                table = _without_column(table, index)
                break


def _dropped_note(dropped: list[str], width: int) -> str:
    return (f"left out to fit {width} columns: {', '.join(dropped)} "
            "(a wider terminal, COLUMNS=200, --markdown or --csv shows every column)")


def render_comparison(comparison: Comparison, stream: IO[str], *, width: int = 140, per_rank: bool = False,
                      all_ranks: bool = False) -> None:
    """Write the headline table, the lean-saves lines and the MoE communicator table to ``stream``.

    Args:
        comparison: runs of several scenarios (``memprobe.model.comparison.load_comparison``).
        stream: where the text goes.
        width: characters per line; fixed so that output does not depend on the terminal.
        per_rank: one row per scenario and rank instead of the worst rank with the spread (ranks that read alike
            share a row, with their rank list).
        all_ranks: with ``per_rank``, one row for every rank even where ranks read alike.
    """
    with console_for(stream, width) as console:
        _render_comparison(console, comparison, per_rank, all_ranks)


def _render_comparison(console: Console, comparison: Comparison, per_rank: bool, all_ranks: bool = False) -> None:
    summaries = summarize(comparison)  # once: the three blocks below read the same
    table, notes = headline(comparison, per_rank=per_rank, all_ranks=all_ranks, summaries=summaries)
    console.print(table.title)
    drawn, dropped = fit_table(table, console.width, headline_drop_order(comparison), merge_scenario=True)
    print_table(console, drawn)
    for note in notes + ([_dropped_note(dropped, console.width)] if dropped else []):
        console.print(note)
    for block in lean_lines(comparison, summaries):
        console.print()
        console.print(block[0])
        for line in block[1:]:
            console.print(f"  {line}")
    moe = moe_table(comparison, summaries)
    if moe is not None:
        console.print()
        console.print(moe.title)
        drawn, dropped = fit_table(moe, console.width, highlighted_drop_order(summaries), merge_scenario=False)
        print_table(console, drawn)
        if dropped:
            console.print(_dropped_note(dropped, console.width))
    if comparison.path is not None:
        console.print(files_line(comparison.path, COMPARISON_FILES, tail="one run folder per scenario"))


__all__ = ["TextTable", "headline", "lean_lines", "moe_table", "render_comparison"]

"""One run as a table: bytes each step added, across ranks (min / median / max, worst rank) or per rank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from rich import box
from rich.console import Console
from rich.table import Table

from memprobe.analysis.attribution import (
    CONTEXT,
    TOTAL_AFTER_FIRST_USE,
    TOTAL_AFTER_INIT,
    UNATTRIBUTED,
    WORLD,
    components_by_rank,
    skipped_by_rank,
    spread,
)
from memprobe.reports._format import console_for, files_line, print_table
from memprobe.reports.failed_builds import run_notes as failed_notes
from memprobe.units import NA, UNIT, mib
from memprobe.reports._model import GroupInfo, layout_flags, measured_memory, plan_of
from memprobe.model.records import Run
from memprobe import engines
from memprobe.model.steps import GROUPS_CREATED, group_init_steps

RUN_FILES = (("run.json", "run.json"), ("readings.csv", "readings.csv"), ("ranks/rank-NNNNN.jsonl", "ranks/rank-*.jsonl"))

CPU_GROUPS_LABEL = "groups created (gloo + gloo)"  # --device cpu: both of a group's new_group calls are gloo
GROUPS_CREATED_LABEL = "groups created (NCCL + gloo)"
SAMPLING_LABELS = {
    "process": "process (the rank's own GPU memory, NVML)",
    "device": "device (whole-GPU used memory, NVML)",
    "host_rss_anon": "host_rss_anon (host RSS: anonymous and shared pages, --device cpu)",
    "host_rss": "host_rss (whole host RSS, --device cpu of an earlier memprobe)",
}


@dataclass(frozen=True)
class _Row:
    label: str
    key: str


def _sampling_mode(run: Run) -> str:
    mode = run.record.environment.get("sampling_mode")
    if not mode:
        modes = sorted({rank.sampling_mode for rank in run.record.ranks if rank.sampling_mode})
        mode = "/".join(modes)
    return str(mode) if mode else NA


def header_lines(run: Run) -> list[str]:
    """The lines above the table: what ran, where, and how it was measured."""
    record = run.record
    title = f"run {record.run_id}"
    if record.scenario and record.scenario != record.run_id:
        title = f"scenario {record.scenario} (run {record.run_id})"
    mode = _sampling_mode(run)
    first = [f"{title}: {layout_flags(run)}", f"stack {record.stack_name or NA}", f"world size {record.world_size}"]
    status = f"status {record.status}"
    if record.failure is not None:
        status += f" ({record.failure.describe()})"
    first.append(status)
    second = [f"device {record.device}"]
    gpu = record.environment.get("gpu_model")
    if gpu:
        second.append(f"GPU {gpu}")
    second += [f"sampling {SAMPLING_LABELS.get(mode, mode)}", f"warmup {record.warmup or NA}"]
    return [
        ", ".join(first),
        ", ".join(second),
        f"{measured_memory([run])} per rank; rows: bytes each step added; totals: the reading after the step; "
        f"{UNIT} = 2^20 bytes",
    ]


def _is_zero(values: list[int | None]) -> bool:
    return all(value == 0 for value in values)


def _is_zero_where_known(values: list[int | None]) -> bool:
    return all(value in (0, None) for value in values)


def _kinds_in_order(recorded: set[str]) -> list[str]:
    """The communicator kinds a run's plan recorded (run.json keeps them sorted), in their engines' order."""
    order = [kind.name for kind in engines.kinds(engines.names())]
    return sorted(recorded, key=lambda kind: (order.index(kind), "") if kind in order else (len(order), kind))


def component_rows(plan: list[GroupInfo], per_rank: dict[int, dict[str, int | None]],
                   skipped: dict[int, set[str]], device: str = "cuda",
                   how: str = "measured") -> tuple[list[_Row], list[_Row], list[str]]:
    """(component rows, total rows, notes about what was folded)."""

    def values(key: str) -> list[int | None]:
        return [parts.get(key) for parts in per_rank.values()]

    # A step skipped on every rank built nothing: it is no row, only a note
    skipped_everywhere = set.intersection(*skipped.values()) if skipped else set()
    skipped_shown: list[str] = []
    rows = []
    for label, key in (("CUDA context", CONTEXT), ("world (init_process_group)", WORLD)):
        if key in skipped_everywhere:
            skipped_shown.append(label)
        else:
            rows.append(_Row(label, key))
    folded_groups: list[str] = []
    folded_steps: list[str] = []
    built = [group for group in plan if not group.is_alias and group.name != WORLD]
    kinds = _kinds_in_order({kind for group in plan for kind in group.communicators})
    for group in built:
        group_rows = []
        for step in group_init_steps(kinds):
            key = f"{group.name}/{step}"
            needed = group.builds(step) or (step == GROUPS_CREATED and group.width > 1)
            if needed and key in skipped_everywhere:
                skipped_shown.append(key)
                continue
            # a step that builds nothing (width 1, or not in the stack) is folded when it added 0 bytes
            # wherever it was measured; a rank that stopped early shows as n/a in the totals anyway
            if needed or not _is_zero_where_known(values(key)):
                label = (engines.kind_label(step) if step != GROUPS_CREATED else
                         CPU_GROUPS_LABEL if device == "cpu" else GROUPS_CREATED_LABEL)
                group_rows.append(_Row(f"{group.name}: {label}", key))
            elif group.width > 1:
                folded_steps.append(f"{group.name}/{step}")
        if group_rows:
            rows.extend(group_rows)
        else:
            folded_groups.append(group.name)
    for group in [g for g in plan if not g.is_alias]:
        key = f"{group.name}/first_use"
        if group.width > 1 or not _is_zero_where_known(values(key)):
            rows.append(_Row(f"first use: {group.name}", key))
    if not _is_zero(values(UNATTRIBUTED)):
        rows.append(_Row("between steps (unattributed)", UNATTRIBUTED))
    totals = [_Row("total after init", TOTAL_AFTER_INIT), _Row("total after first use", TOTAL_AFTER_FIRST_USE)]
    notes = []
    if folded_groups:
        notes.append(f"width-1 groups, 0 {UNIT} wherever {how}, not shown: {', '.join(folded_groups)}")
    if folded_steps:
        notes.append(f"not built (0 {UNIT} wherever {how}), not shown: {', '.join(folded_steps)}")
    if skipped_shown:
        notes.append(f"skipped on every rank (nothing built), not shown: {', '.join(skipped_shown)}")
    alias_names = [f"{g.name} = {g.alias_of}" for g in plan if g.is_alias]
    if alias_names:
        notes.append(f"aliases (same group object, no memory of their own): {', '.join(alias_names)}")
    return rows, totals, notes


def _worst_text(values: dict[int, int | None]) -> str:
    summary = spread(values)
    if summary.worst_rank is None:
        return NA
    text = str(summary.worst_rank)
    if summary.ranks_known > 1 and summary.minimum == summary.maximum:
        text = "all equal"
    if summary.ranks_known < len(values):
        text += f" ({summary.ranks_known}/{len(values)} ranks known)"
    return text


def render_run(run: Run, stream: IO[str], *, width: int = 120, per_rank: bool = False) -> None:
    """Write one run's table to ``stream``.

    Args:
        run: a loaded run (``memprobe.model.records.load_run``) or a synthetic one.
        stream: where the text goes (``sys.stdout``, a ``StringIO``...).
        width: characters per line; fixed so that output does not depend on the terminal.
        per_rank: one column per rank instead of min / median / max and the worst rank.
    """
    with console_for(stream, width) as console:
        _render_run(console, run, per_rank)


def component_table(columns: list[str]) -> Table:
    """A table with a "component" column and right-aligned value columns, in the style of every run table."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("component")
    for column in columns:
        table.add_column(column, justify="right")
    return table


def _render_run(console: Console, run: Run, per_rank: bool) -> None:
    for line in header_lines(run):
        console.print(line)
    per_rank_parts = components_by_rank(run)
    if not per_rank_parts:
        console.print("no readings: nothing to show")
    else:
        rows, totals, notes = component_rows(plan_of(run), per_rank_parts, skipped_by_rank(run), run.record.device,
                                             "estimated" if run.record.source == "estimated" else "measured")
        ranks = sorted(per_rank_parts)
        table = component_table([f"rank {rank}\n{UNIT}" for rank in ranks] if per_rank
                                else [f"{label}\n{UNIT}" for label in ("min", "median", "max")] + ["worst rank"])

        def add(row: _Row) -> None:
            values = {rank: per_rank_parts[rank].get(row.key) for rank in ranks}
            if per_rank:
                table.add_row(row.label, *(mib(values[rank]) for rank in ranks))
            else:
                summary = spread(values)
                table.add_row(row.label, mib(summary.minimum), mib(summary.median), mib(summary.maximum), _worst_text(values))

        for row in rows:
            add(row)
        table.add_section()
        for row in totals:
            add(row)
        print_table(console, table)
        for note in failed_notes(run) + notes:
            console.print(note)
    if run.path is not None:
        console.print(files_line(run.path, RUN_FILES))

"""``memprobe plan`` as a table: one row per group in the engine's creation order, a column per communicator kind."""

from __future__ import annotations

from typing import TextIO

from rich import box
from rich.table import Table

from memprobe import engines
from memprobe.engines.api import Plan
from memprobe.engines.stacks import Stack
from memprobe.reports._format import console_for, print_table

MAX_LISTS_SHOWN = 4


def _ranks_text(rank_lists: tuple[tuple[int, ...], ...]) -> str:
    def one(ranks: tuple[int, ...]) -> str:
        if len(ranks) > 8:
            return f"[{ranks[0]},{ranks[1]},...,{ranks[-1]}]"
        return "[" + ",".join(map(str, ranks)) + "]"

    shown = " ".join(one(ranks) for ranks in rank_lists[:MAX_LISTS_SHOWN])
    if len(rank_lists) > MAX_LISTS_SHOWN:
        shown += f" ... (+{len(rank_lists) - MAX_LISTS_SHOWN} more)"
    return shown


def render_plan(plan: Plan, stack: Stack, stream: TextIO, width: int = 120) -> None:
    with console_for(stream, width) as console:
        _render_plan(console, plan, stack)


def _render_plan(console, plan: Plan, stack: Stack) -> None:
    layout = plan.layout
    engine = engines.engine(stack.engine)
    console.print(f"memprobe plan: {layout.flags()}  ({engine.describe_layout(layout)})  stack: {stack.name}")
    # the same plain style as the other tables; names and numbers never wrap, only rank lists
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    kinds = [kind.label.replace(" ", "\n") for kind in engine.kinds]
    for column in ("group", "lists x\nwidth", "ranks", "alias\nof", *kinds, "new_group\ncalls"):
        table.add_column(column, overflow="fold", no_wrap=column != "ranks")
    total_calls = 0
    for group in plan.groups:
        communicators = stack.communicators_for(group)
        calls = group.new_group_calls
        total_calls += calls
        table.add_row(
            group.name,
            f"{len(group.rank_lists)} x {group.width}",
            _ranks_text(group.rank_lists),
            group.alias_of or "",
            *("yes" if communicators[kind.name] else "-" for kind in engine.kinds),
            str(calls),
        )
    print_table(console, table)
    console.print(f"{total_calls} new_group calls per rank (NCCL + gloo for every rank list; aliases reuse a group).")

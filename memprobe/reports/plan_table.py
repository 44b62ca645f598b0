"""``memprobe plan`` as a table: one row per group in SGLang's creation order."""

from __future__ import annotations

from typing import TextIO

from rich import box
from rich.table import Table

from memprobe.reports._format import console_for, print_table

from memprobe.model.layout import Plan
from memprobe.model.stacks import Stack

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
    console.print(f"memprobe plan: {layout.flags()}  (world size {layout.world_size}, moe_tp {layout.moe_tp}, "
                  f"attn_tp {layout.attn_tp})  stack: {stack.name}")
    # the same plain style as the other tables; names and numbers never wrap, only rank lists
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("group", "lists x\nwidth", "ranks", "alias\nof", "pynccl", "custom\nall-reduce", "new_group\ncalls"):
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
            "yes" if communicators["pynccl"] else "-",
            "yes" if communicators["custom_allreduce"] else "-",
            str(calls),
        )
    print_table(console, table)
    console.print(f"{total_calls} new_group calls per rank (NCCL + gloo for every rank list; aliases reuse a group).")

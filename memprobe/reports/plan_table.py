"""``memprobe plan`` as a table: one row per group in the engine's creation order, a column per communicator kind
holding what the group builds (:meth:`memprobe.engines.api.Engine.decide` on the assumed facts), the reasons why
not as numbered notes under the table."""

from __future__ import annotations

from typing import TextIO

from rich import box
from rich.table import Table

from memprobe import engines
from memprobe.api.results import ListDecisions, Plan
from memprobe.engines.api import Decision, Verdict
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


#: How a verdict reads in a cell; a reason (not eligible, failed) goes to a numbered note under the table.
_WORDS = {Verdict.BUILT: "built", Verdict.OFF: "off", Verdict.ALIAS: "alias", Verdict.WIDTH_1: "width 1",
          Verdict.NO_DEVICE: "no device", Verdict.NOT_ELIGIBLE: "no", Verdict.FAILED: "failed"}
_NOTED = (Verdict.NOT_ELIGIBLE, Verdict.FAILED)


def render_plan(planned: Plan, stream: TextIO, width: int = 120) -> None:
    with console_for(stream, width) as console:
        _render_plan(console, planned)


class _Notes:
    """Numbered reasons, each once, with the group/kind pairs it applies to."""

    def __init__(self) -> None:
        self.where: dict[str, list[str]] = {}

    def mark(self, decision: Decision) -> str:
        where = self.where.setdefault(decision.reason, [])
        label = f"{decision.group} {decision.kind}"
        if label not in where:
            where.append(label)
        return f"[{list(self.where).index(decision.reason) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{number}] {', '.join(where)}: {reason}" for number, (reason, where) in enumerate(self.where.items(), 1)]


def _cell(cases: tuple[ListDecisions, ...], kind: str, notes: _Notes) -> str:
    """The decision of the group's lists; where lists spanning more nodes decide otherwise, one line per span."""
    words = []
    for case in cases:
        decision = next(d for d in case.decisions if d.kind == kind)
        words.append(_WORDS[decision.verdict] + (f" {notes.mark(decision)}" if decision.verdict in _NOTED else ""))
    if len(set(words)) == 1:
        return words[0]
    return "\n".join(f"{case.nodes} node{'s' if case.nodes > 1 else ''}: {word}" for case, word in zip(cases, words))


def _render_plan(console, planned: Plan) -> None:
    plan, stack = planned.groups, planned.stack
    layout = plan.layout
    engine = engines.engine(stack.engine)
    console.print(f"memprobe plan: {layout.flags()}  ({engine.describe_layout(layout)})  stack: {stack.name}")
    if planned.assumed is not None:
        console.print(planned.assumed.describe())
    # the same plain style as the other tables; names and numbers never wrap, only rank lists
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    notes = _Notes()
    cells = {group.name: [_cell(planned.decisions[group.name], kind.name, notes) for kind in engine.kinds]
             for group in plan.groups}
    for column in ("group", "lists x\nwidth", "ranks", "alias\nof"):
        table.add_column(column, overflow="fold", no_wrap=column != "ranks")
    for index, kind in enumerate(engine.kinds):  # a narrow console folds the header, never a decision
        longest = max(len(line) for row in cells.values() for line in row[index].splitlines())
        table.add_column(kind.label.replace(" ", "\n"), overflow="fold", no_wrap=True, min_width=longest)
    table.add_column("new_group\ncalls", overflow="fold", no_wrap=True)
    total_calls = 0
    for group in plan.groups:
        calls = group.new_group_calls
        total_calls += calls
        table.add_row(group.name, f"{len(group.rank_lists)} x {group.width}", _ranks_text(group.rank_lists),
                      group.alias_of or "", *cells[group.name], str(calls))
    print_table(console, table)
    for line in notes.lines():
        console.print(line)
    console.print(f"{total_calls} new_group calls per rank (NCCL + gloo for every rank list; aliases reuse a group).")

"""``memprobe plan``: the groups SGLang builds for a layout, as a table or streamed JSON; nothing is launched."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import typer

from memprobe.commands.common import ATTN_CP, ATTN_DP, ENV, EP, MOE_DP, PP, QUIET, STACK, TP, VERBOSE, console_width, layout_from

PLAN_SCHEMA_VERSION = 1  # docs/schema/plan.schema.json


def plan(
    tp: int = TP, ep: int = EP, pp: int = PP, moe_dp: int = MOE_DP, attn_dp: int = ATTN_DP, attn_cp: int = ATTN_CP,
    stack: str = STACK,
    json_output: bool = typer.Option(False, "--json", envvar=ENV + "PLAN_JSON", help="Print one JSON document instead of a table."),
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> int:
    """Print every group SGLang 0.5.23 builds for a layout, with rank lists, aliases and communicators.

    Nothing is launched and no GPU is needed. Examples:

    \b
      memprobe plan --tp 8 --ep 4 --stack full
      memprobe plan --tp 4 --ep 2 --stack configs/lean.toml --json

    Exit codes: 0 ok, 2 bad input.
    """
    from memprobe.model.layout import plan_groups
    from memprobe.model.stacks import resolve_stack

    layout = layout_from(tp, ep, pp, moe_dp, attn_dp, attn_cp)
    chosen = resolve_stack(stack)
    groups_plan = plan_groups(layout)
    from memprobe.verbosity import detail

    detail(f"memprobe: {len(groups_plan.groups)} groups for world size {layout.world_size}, stack {chosen.name}")
    if json_output:
        _stream_plan_json(groups_plan, chosen, sys.stdout)
        return 0
    from memprobe.reports.plan_table import render_plan

    render_plan(groups_plan, chosen, sys.stdout, width=console_width())
    return 0


def _stream_plan_json(groups_plan: Any, chosen: Any, stream: TextIO) -> None:
    """One JSON document, written group by group so that 4096-rank plans stream."""
    head = {"schema_version": PLAN_SCHEMA_VERSION, "world_size": groups_plan.layout.world_size,
            "layout": groups_plan.layout.as_dict(), "stack": chosen.name}
    stream.write(json.dumps(head)[:-1] + ', "groups": [')
    for index, group in enumerate(groups_plan.groups):
        item = {"name": group.name, "ranks": [list(r) for r in group.rank_lists], "alias_of": group.alias_of,
                "communicators": chosen.communicators_for(group)}
        stream.write(("," if index else "") + json.dumps(item))
    stream.write("]}\n")

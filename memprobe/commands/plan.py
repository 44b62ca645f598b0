"""``memprobe plan``: the groups an engine builds for a layout, as a table or streamed JSON; nothing is launched."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Mapping, Optional, TextIO

from memprobe import api
from memprobe.commands.options import (
    DEFAULT_WIDTHS, EP, QUIET, STACK, TP, VERBOSE, layout_options, option,
)
from memprobe.commands.output import console_width

PLAN_SCHEMA_VERSION = 1  # docs/schema/plan.schema.json


@layout_options
def plan(
    tp: int = TP, ep: int = EP, widths: Mapping[str, Any] = DEFAULT_WIDTHS,
    stack: Optional[str] = STACK,
    engine: str = option(api.PlanOptions.engine, "--engine", env="ENGINE",
                         help="Whose groups: sglang-ref (or its older name memprobe; SGLang 0.5.23's, as memprobe "
                              "reproduces them) or vllm-ref (vLLM 0.33.0's); sglang and vllm plan as their "
                              "reproductions do (plan runs no engine code); or another registered engine's."),
    json_output: bool = option(False, "--json", env="PLAN_JSON", help="Print one JSON document instead of a table."),
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> int:
    """Print every group an engine builds for a layout (SGLang 0.5.23's by default), with rank lists, aliases and
    what each group's communicators do: built, or not and why (numbered notes under the table).

    Nothing is launched and no GPU is needed: the decisions are taken on the machine the estimate assumes by default
    (the packaged calibration's GPU, nodes of 8 NVSwitch-joined GPUs, the engine's env preset), and the table says
    so. A stack that stands for a release (vLLM's vllm:0.11) plans that release's groups. Examples:

    \b
      memprobe plan --tp 8 --ep 4 --stack full
      memprobe plan --tp 4 --ep 2 --stack configs/lean.toml --json
      memprobe plan --engine vllm-ref --tp 8 --moe --stack shared-ep

    Exit codes: 0 ok, 2 bad input. Every command: 70 an unexpected error (one line; its traceback in a temp file),
    129/130/143 hung up, interrupted, terminated, 141 standard output's reader went away.
    """
    planned = api.plan(tp=tp, ep=ep, **widths, stack=stack, engine=engine)
    from memprobe.verbosity import detail

    detail(f"memprobe: {len(planned.groups.groups)} groups for world size {planned.groups.layout.world_size}, "
           f"stack {planned.stack.name}")
    if json_output:
        _stream_plan_json(planned, sys.stdout)
        return 0
    from memprobe.reports.plan_table import render_plan

    render_plan(planned, sys.stdout, width=console_width())
    return 0


def _stream_plan_json(planned: Any, stream: TextIO) -> None:
    """One JSON document, written group by group so that 4096-rank plans stream."""
    groups_plan, chosen, assumed = planned.groups, planned.stack, planned.assumed
    head = {"schema_version": PLAN_SCHEMA_VERSION, "world_size": groups_plan.layout.world_size,
            "layout": groups_plan.layout.as_dict(), "stack": chosen.name,
            "assumed": {**dataclasses.asdict(assumed), "note": assumed.describe()}}
    stream.write(json.dumps(head)[:-1] + ', "groups": [')
    for index, group in enumerate(groups_plan.groups):
        item = {"name": group.name, "ranks": [list(r) for r in group.rank_lists], "alias_of": group.alias_of,
                "communicators": chosen.communicators_for(group),
                "decisions": [{"nodes": case.nodes, "lists": case.lists,
                               "communicators": {d.kind: {"verdict": d.verdict.value, "reason": d.reason,
                                                          "implementation": d.implementation}
                                                 for d in case.decisions}}
                              for case in planned.decisions[group.name]]}
        stream.write(("," if index else "") + json.dumps(item))
    stream.write("]}\n")

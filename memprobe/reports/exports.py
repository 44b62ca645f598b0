"""Machine-readable exports of a comparison (CSV, JSON) and its GitHub Markdown summary.

This is the reporting edge: the only module of memprobe that imports pandas. Byte columns use
pandas' nullable ``Int64`` dtype, so a missing value is written as an empty CSV field and the
others stay integers (a plain int column with one NaN would silently become float).

Column contracts (stable; new columns are only ever appended):

``long_dataframe`` / ``write_csv`` (:data:`LONG_COLUMNS`), one row per scenario, rank, group and step
(i.e. per reading):
    scenario, stack, layout (slug, e.g. ``tp4-ep2``), rank, sequence, group, step, status,
    primary_bytes, process_bytes, device_used_bytes, torch_reserved_bytes, other_gpus_bytes,
    added_bytes (primary_bytes minus the rank's previous reading; 0 for the first; empty for a skipped
    step, which built nothing: its movement is host noise counted as unattributed), elapsed_s, note,
    torch_cache_added_bytes (torch_reserved_bytes minus the rank's previous reading: the part of added_bytes
    torch's caching allocator took; empty on CPU runs and for a skipped step), rest_added_bytes (added_bytes
    minus that part: NCCL, the CUDA driver, IPC mappings), device (cuda or cpu) and sampling_mode (process,
    device or host_rss_anon: what the bytes are).

``summary_dataframe`` / ``write_summary_csv`` (:func:`summary_columns`), one row per scenario and rank:
    scenario, stack, layout, rank, cuda_context_bytes (empty where skipped: --device cpu), world_bytes, ``<group>_init_bytes`` for every
    group of SGLang's creation order except world (tp, attn_cp, attention_tp, moe_dp, moe_ep, moe_tp,
    pp, self_pp; then any other group found in the runs), first_use_bytes, total_after_init_bytes,
    total_after_first_use_bytes, delta_vs_baseline_bytes (total after first use minus the same rank
    of the baseline), unattributed_bytes (bytes added between steps or across skipped steps), delta_after_init_vs_baseline_bytes,
    is_worst_rank, device, sampling_mode.
    ``<group>_init_bytes`` is empty for an alias group (it is the same object as another group and
    has no memory of its own) and for a value that is not available.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from memprobe.analysis.attribution import (
    charged_deltas, components_by_rank, rank_readings, skipped_by_rank, subtract, torch_cache,
)
from memprobe.reports.nccl_account import nccl_account_document
from memprobe import engines
from memprobe.reports._model import summarize
from memprobe.reports.compare_table import TextTable, headline, lean_lines, moe_table
from memprobe.reports.fidelity import fidelity_document
from memprobe.model.records import StepStatus, append_step_summary, atomic_write_text
from memprobe.model.comparison import Comparison

JSON_SCHEMA_VERSION = 1
LONG_COLUMNS: tuple[str, ...] = (
    "scenario",
    "stack",
    "layout",
    "rank",
    "sequence",
    "group",
    "step",
    "status",
    "primary_bytes",
    "process_bytes",
    "device_used_bytes",
    "torch_reserved_bytes",
    "other_gpus_bytes",
    "added_bytes",
    "elapsed_s",
    "note",
    "torch_cache_added_bytes",
    "rest_added_bytes",
    "device",
    "sampling_mode",
)
_LONG_INT = ("rank", "sequence", "primary_bytes", "process_bytes", "device_used_bytes", "torch_reserved_bytes",
             "other_gpus_bytes", "added_bytes", "torch_cache_added_bytes", "rest_added_bytes")


def _typed(frame: pd.DataFrame, int_columns: list[str] | tuple[str, ...]) -> pd.DataFrame:
    for column in int_columns:
        frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
    return frame


def long_dataframe(comparison: Comparison) -> pd.DataFrame:
    """Every reading of every scenario with the bytes it added (see the module docstring for columns)."""
    records: list[dict[str, Any]] = []
    for item in comparison.runs:
        layout = item.scenario.layout.slug()
        for rank, readings in sorted(rank_readings(item.run).items()):
            cache_added = [cache for _, cache, _noise in charged_deltas(readings, torch_cache)]
            for (reading, added, _noise), cache in zip(charged_deltas(readings), cache_added):
                if _not_measured(reading):  # the step built nothing: empty, as in every other export
                    added = cache = None
                records.append(
                    {
                        "scenario": item.scenario.name,
                        "stack": item.scenario.stack,
                        "layout": layout,
                        "rank": rank,
                        "sequence": reading.sequence,
                        "group": reading.group,
                        "step": reading.step,
                        "status": reading.status,
                        "primary_bytes": reading.primary_bytes,
                        "process_bytes": reading.process_bytes,
                        "device_used_bytes": reading.device_used_bytes,
                        "torch_reserved_bytes": reading.torch_reserved_bytes,
                        "other_gpus_bytes": reading.other_gpus_bytes,
                        "added_bytes": added,
                        "elapsed_s": float(reading.elapsed_s),
                        "note": reading.note,
                        "torch_cache_added_bytes": cache,
                        "rest_added_bytes": subtract(added, cache),
                        **what_was_read(item.run),
                    }
                )
    frame = pd.DataFrame.from_records(records, columns=list(LONG_COLUMNS))
    frame = _typed(frame, _LONG_INT)
    frame["elapsed_s"] = frame["elapsed_s"].astype("float64")
    return frame


def _not_measured(reading: Any) -> bool:
    return reading.status == StepStatus.SKIPPED and reading.step != "start"


def what_was_read(run: Any) -> dict[str, str]:
    """The device and sampling mode of a run's bytes (host RSS on --device cpu), carried by every CSV row."""
    return {"device": run.record.device, "sampling_mode": str((run.record.environment or {}).get("sampling_mode") or "")}


def _without_skipped(parts_by_rank: dict[int, dict[str, Any]], skipped: dict[int, set[str]]) -> dict[str, dict[str, Any]]:
    """Components as JSON: a skipped step was not measured, so null (an empty field in the CSV exports), never 0."""
    return {str(rank): {key: None if key in skipped.get(rank, set()) else value for key, value in parts.items()}
            for rank, parts in parts_by_rank.items()}


def _group_columns(comparison: Comparison) -> list[str]:
    order = engines.group_order(item.run.record.engine for item in comparison.runs)
    names = [name for name in order if name != "world"]
    for item in comparison.runs:
        for entry in item.run.record.plan:
            if entry.name not in names and entry.name != "world":
                names.append(entry.name)
    return names


def summary_columns(comparison: Comparison) -> list[str]:
    """The summary's columns for ``comparison`` (the group columns depend only on the groups it holds)."""
    return [
        "scenario",
        "stack",
        "layout",
        "rank",
        "cuda_context_bytes",
        "world_bytes",
        *(f"{name}_init_bytes" for name in _group_columns(comparison)),
        "first_use_bytes",
        "total_after_init_bytes",
        "total_after_first_use_bytes",
        "delta_vs_baseline_bytes",
        "unattributed_bytes",
        "delta_after_init_vs_baseline_bytes",
        "is_worst_rank",
        "device",
        "sampling_mode",
    ]


def summary_dataframe(comparison: Comparison) -> pd.DataFrame:
    """One row per scenario and rank: the headline's numbers in bytes (see the module docstring)."""
    groups = _group_columns(comparison)
    columns = summary_columns(comparison)
    records = []
    for summary in summarize(comparison):
        for rank in sorted(summary.ranks):
            values = summary.ranks[rank]
            record: dict[str, Any] = {
                "scenario": summary.name,
                "stack": summary.item.scenario.stack,
                "layout": summary.item.scenario.layout.slug(),
                "rank": rank,
                # skipped (--device cpu): empty, not 0, since nothing was measured
                "cuda_context_bytes": None if "cuda_context" in values.skipped else values.cuda_context,
                "world_bytes": values.world,
                "first_use_bytes": values.first_use,
                "total_after_init_bytes": values.total_after_init,
                "total_after_first_use_bytes": values.total_after_first_use,
                "delta_vs_baseline_bytes": values.delta_after_first_use,
                "unattributed_bytes": values.unattributed,
                "delta_after_init_vs_baseline_bytes": values.delta_after_init,
                "is_worst_rank": rank == summary.worst_rank,
                **what_was_read(summary.item.run),
            }
            for name in groups:
                record[f"{name}_init_bytes"] = values.group_init.get(name)
            records.append(record)
    frame = pd.DataFrame.from_records(records, columns=columns)
    int_columns = [c for c in columns if c.endswith("_bytes") or c == "rank"]
    frame = _typed(frame, int_columns)
    frame["is_worst_rank"] = frame["is_worst_rank"].astype("bool")
    return frame


def _csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n")


def write_csv(comparison: Comparison, path: str | Path) -> None:
    """:func:`long_dataframe` as CSV, written atomically."""
    atomic_write_text(path, _csv_text(long_dataframe(comparison)))


def write_summary_csv(comparison: Comparison, path: str | Path) -> None:
    """:func:`summary_dataframe` as CSV, written atomically."""
    atomic_write_text(path, _csv_text(summary_dataframe(comparison)))


def comparison_document(comparison: Comparison) -> dict[str, Any]:
    """Everything in one JSON-ready dict: definitions, run records, components by rank (all bytes, and the
    torch caching-allocator part of each under ``torch_cache_by_rank``), NCCL's account of each communicator
    (``nccl_account``, null without ``--nccl-log``) and readings, and (only when the comparison pairs both
    engines) the fidelity report under ``fidelity``."""
    scenarios = []
    for item in comparison.runs:
        scenarios.append(
            {
                "name": item.scenario.name,
                "definition": item.scenario.definition(),
                "definition_hash": item.scenario.definition_hash(),
                "run_path": None if item.run.path is None else str(item.run.path),
                "run": item.run.record.as_document(),
                "components_by_rank": _without_skipped(components_by_rank(item.run), skipped_by_rank(item.run)),
                "torch_cache_by_rank": _without_skipped(components_by_rank(item.run, torch_cache), skipped_by_rank(item.run)),
                "nccl_account": nccl_account_document(item.run),
                # component keys whose step was skipped (charged 0 above)
                "skipped_by_rank": {str(rank): sorted(keys) for rank, keys in skipped_by_rank(item.run).items()},
                "readings": [reading.as_row() for reading in sorted(item.run.all_readings(), key=lambda r: (r.rank, r.sequence))],
            }
        )
    document = {
        "schema_version": JSON_SCHEMA_VERSION,
        "comparison_id": comparison.comparison_id,
        "baseline": comparison.baseline,
        "units": "bytes",
        "scenarios": scenarios,
    }
    estimated = [item.run for item in comparison.runs if item.run.record.source == "estimated"]
    if estimated:  # memprobe estimate: say so at the top, with what the numbers were made from
        document["estimate"] = {"estimated": True, "measured": False, **estimated[0].record.environment.get("estimate", {})}
    fidelity = fidelity_document(comparison)
    if fidelity:  # only comparisons run with --engine memprobe,sglang
        document["fidelity"] = fidelity
    return document


def write_json(comparison: Comparison, path: str | Path) -> None:
    """:func:`comparison_document` as indented JSON with sorted keys, written atomically."""
    atomic_write_text(path, json.dumps(comparison_document(comparison), indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- Markdown


def _escape(cell: str) -> str:
    """Text safe in a GitHub Markdown table cell (``|`` splits cells; ``<group>`` would vanish as HTML)."""
    # only what GitHub would read as HTML is escaped, so that "<0.1" stays readable in the raw file
    cell = re.sub(r"&(?=[A-Za-z#])", "&amp;", cell)
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", cell).replace("|", "\\|")


def _markdown_table(table: TextTable) -> list[str]:
    lines = ["| " + " | ".join(_escape(h) for h in table.headers) + " |"]
    lines.append("|" + "|".join("---:" if numeric else "---" for numeric in table.numeric) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_escape(cell) for cell in row) + " |")
    return lines


def render_markdown(comparison: Comparison, *, per_rank: bool = False) -> str:
    """The headline table, the lean-saves lines and the MoE communicator table as GitHub Markdown."""
    summaries = summarize(comparison)  # once: the three blocks below read the same
    table, notes = headline(comparison, per_rank=per_rank, summaries=summaries)
    lines = [f"### memprobe: {_escape(comparison.comparison_id)}", "", f"{_escape(table.title)}", ""]
    lines += _markdown_table(table)
    lines.append("")
    lines += [f"- {_escape(note)}" for note in notes]
    blocks = lean_lines(comparison, summaries)
    if blocks:
        lines.append("")
        for block in blocks:
            lines.append(f"**{_escape(block[0])}**")
            lines += [f"- {_escape(line)}" for line in block[1:]]
            lines.append("")
    moe = moe_table(comparison, summaries)
    if moe is not None:
        if lines[-1] != "":
            lines.append("")
        lines += [f"{_escape(moe.title)}", ""]
        lines += _markdown_table(moe)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def write_markdown(comparison: Comparison, path: str | Path) -> None:
    """Write :func:`render_markdown` to ``path``; also append it to ``$GITHUB_STEP_SUMMARY`` when set."""
    text = render_markdown(comparison)
    atomic_write_text(path, text)
    append_step_summary(text)


__all__ = [
    "LONG_COLUMNS",
    "comparison_document",
    "long_dataframe",
    "render_markdown",
    "summary_columns",
    "summary_dataframe",
    "write_csv",
    "write_json",
    "write_markdown",
    "write_summary_csv",
]

"""Machine-readable exports of a comparison (CSV, JSON) and its GitHub Markdown summary.

This is the reporting edge: the only module of memprobe that imports pandas, and only for the DataFrames
(:func:`long_dataframe`, :func:`summary_dataframe`): the CSV, JSON and Markdown files are written without it, so a
command's exports do not pay pandas' import. Byte columns of the DataFrames use pandas' nullable ``Int64`` dtype, so a missing value is written as an empty CSV field and the
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
    minus that part: NCCL, the CUDA driver, IPC mappings), device (cuda or cpu), sampling_mode (process,
    device, host_rss_anon or estimate: what the bytes are) and rules_nccl (an estimate's rows: the NCCL release
    whose sizing rules made them, e.g. ``2.30.7``; empty for a measurement).

``summary_dataframe`` / ``write_summary_csv`` (:func:`summary_columns`), one row per scenario and rank:
    scenario, stack, layout, rank, cuda_context_bytes (empty where skipped: --device cpu), world_bytes, ``<group>_init_bytes`` for every
    group of SGLang's creation order except world (tp, attn_cp, attention_tp, moe_dp, moe_ep, moe_tp,
    pp, self_pp; then any other group found in the runs), first_use_bytes, total_after_init_bytes,
    total_after_first_use_bytes, delta_vs_baseline_bytes (total after first use minus the same rank
    of the baseline), unattributed_bytes (bytes added between steps or across skipped steps), delta_after_init_vs_baseline_bytes,
    is_worst_rank, device, sampling_mode, rules_nccl.
    ``<group>_init_bytes`` is empty for an alias group (it is the same object as another group and
    has no memory of its own) and for a value that is not available.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

from memprobe.analysis.attribution import (
    charged_deltas, components_by_rank, rank_components, skipped_by_rank, skipped_keys, subtract, torch_cache,
)
from memprobe.reports.nccl_account import nccl_account_document
from memprobe import engines
from memprobe.reports._model import summarize
from memprobe.reports.compare_table import TextTable, headline, lean_lines, moe_table
from memprobe.reports.fidelity import fidelity_document
from memprobe.model.rank_table import rank_table
from memprobe.model.records import RankInfo, StepStatus, append_step_summary, atomic_write_lines, atomic_write_text
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
    "rules_nccl",
)
_LONG_INT = ("rank", "sequence", "primary_bytes", "process_bytes", "device_used_bytes", "torch_reserved_bytes",
             "other_gpus_bytes", "added_bytes", "torch_cache_added_bytes", "rest_added_bytes")


def _typed(frame: pd.DataFrame, int_columns: list[str] | tuple[str, ...]) -> pd.DataFrame:
    import pandas as pd

    for column in int_columns:
        frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
    return frame


def long_rows(comparison: Comparison) -> Iterator[list[Any]]:
    """Every reading of every scenario with the bytes it added, one list of :data:`LONG_COLUMNS` values per reading.

    The bytes added are worked out once per rank class; each rank's rows are those with its rank number."""
    for item in comparison.runs:
        head = [item.scenario.name, item.scenario.stack, item.scenario.layout.slug()]
        tail = list(what_was_read(item.run).values())
        table = rank_table(item.run)
        per_class = [rank_class.derived("long_rows", _class_long_rows) for rank_class in table.classes]
        for rank, index in table.class_of.items():
            for values in per_class[index]:
                yield [*head, rank, *values, *tail]


def _class_long_rows(readings: list[Any]) -> list[list[Any]]:
    """One rank's rows from ``sequence`` to ``rest_added_bytes`` (the columns that do not name scenario or rank)."""
    rows = []
    cache_added = [cache for _, cache, _noise in charged_deltas(readings, torch_cache)]
    for (reading, added, _noise), cache in zip(charged_deltas(readings), cache_added):
        if _not_measured(reading):  # the step built nothing: empty, as in every other export
            added = cache = None
        rows.append([reading.sequence, reading.group, reading.step, reading.status, reading.primary_bytes,
                     reading.process_bytes, reading.device_used_bytes, reading.torch_reserved_bytes,
                     reading.other_gpus_bytes, added, float(reading.elapsed_s), reading.note, cache,
                     subtract(added, cache)])
    return rows


def long_dataframe(comparison: Comparison) -> pd.DataFrame:
    """Every reading of every scenario with the bytes it added (see the module docstring for columns)."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(long_rows(comparison)), columns=list(LONG_COLUMNS))
    frame = _typed(frame, _LONG_INT)
    frame["elapsed_s"] = frame["elapsed_s"].astype("float64")
    return frame


def _not_measured(reading: Any) -> bool:
    return reading.status == StepStatus.SKIPPED and reading.step != "start"


def what_was_read(run: Any) -> dict[str, str]:
    """What a run's bytes are, carried by every CSV row: the device and sampling mode (host RSS on --device cpu), and
    for an estimate the NCCL release whose sizing rules made them (``rules_nccl``, as the JSON's ``estimate`` marker
    and the tables' titles name it; empty for a measurement, or an estimate written before it was recorded)."""
    environment = run.record.environment or {}
    basis = (environment.get("estimate") or {}) if run.record.source == "estimated" else {}
    return {"device": run.record.device, "sampling_mode": str(environment.get("sampling_mode") or ""),
            "rules_nccl": str(basis.get("rules_nccl") or "")}


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
        "rules_nccl",
    ]


def summary_rows(comparison: Comparison) -> Iterator[list[Any]]:
    """One list of :func:`summary_columns` values per scenario and rank: the headline's numbers in bytes."""
    groups = _group_columns(comparison)
    for summary in summarize(comparison):
        head = [summary.name, summary.item.scenario.stack, summary.item.scenario.layout.slug()]
        tail = list(what_was_read(summary.item.run).values())
        for rank in sorted(summary.ranks):
            values = summary.ranks[rank]
            yield [
                *head, rank,
                # skipped (--device cpu): empty, not 0, since nothing was measured
                None if "cuda_context" in values.skipped else values.cuda_context,
                values.world,
                *(values.group_init.get(name) for name in groups),
                values.first_use, values.total_after_init, values.total_after_first_use, values.delta_after_first_use,
                values.unattributed, values.delta_after_init, rank == summary.worst_rank, *tail,
            ]


def summary_dataframe(comparison: Comparison) -> pd.DataFrame:
    """One row per scenario and rank: the headline's numbers in bytes (see the module docstring)."""
    columns = summary_columns(comparison)
    import pandas as pd

    frame = pd.DataFrame.from_records(list(summary_rows(comparison)), columns=columns)
    int_columns = [c for c in columns if c.endswith("_bytes") or c == "rank"]
    frame = _typed(frame, int_columns)
    frame["is_worst_rank"] = frame["is_worst_rank"].astype("bool")
    return frame


# a cell a spreadsheet would run as a formula (OWASP "CSV injection"): a stack or scenario named "=cmd|..."
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _inert(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def csv_line(values: Iterable[Any]) -> str:
    """One CSV line (with its ``\\n``): ``None`` an empty field, a float as Python writes it, quoted where needed, as
    pandas' ``to_csv`` writes it. Every cell of every CSV export is formatted here."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if value is None else _inert(value) for value in values])
    return buffer.getvalue()


def write_rows(path: str | Path, columns: Iterable[str], rows: Iterable[list[Any]]) -> None:
    """A CSV file of ``columns`` and ``rows``, each row formatted by :func:`csv_line`, written as it comes."""
    atomic_write_lines(path, _lines(csv_line(columns), (csv_line(row) for row in rows)))


def _lines(header: str, lines: Iterable[str]) -> Iterator[str]:
    """``header`` then ``lines``, in chunks of about 1 MB (one write per chunk, never the whole file)."""
    chunk, size = [header], len(header)
    for line in lines:
        chunk.append(line)
        size += len(line)
        if size > 1 << 20:
            yield "".join(chunk)
            chunk, size = [], 0
    yield "".join(chunk)


def write_csv(comparison: Comparison, path: str | Path) -> None:
    """Every reading (:data:`LONG_COLUMNS`), streamed: each rank class's rows are formatted once
    (:func:`csv_line`) and written under every rank number of the class."""
    atomic_write_lines(path, _lines(csv_line(LONG_COLUMNS), _long_lines(comparison)))


def _long_lines(comparison: Comparison) -> Iterator[str]:
    for item in comparison.runs:
        head = csv_line([item.scenario.name, item.scenario.stack, item.scenario.layout.slug()])[:-1]
        tail = list(what_was_read(item.run).values())
        table = rank_table(item.run)

        def formatted(readings: list[Any]) -> list[str]:
            return [csv_line([*values, *tail]) for values in _class_long_rows(readings)]

        per_class = [rank_class.derived(f"long_lines:{','.join(tail)}", formatted) for rank_class in table.classes]
        for rank, index in table.class_of.items():
            prefix = f"{head},{csv_line([rank])[:-1]},"
            for line in per_class[index]:
                yield prefix + line


def write_summary_csv(comparison: Comparison, path: str | Path) -> None:
    """:func:`summary_rows` as CSV (:func:`summary_columns`), streamed."""
    write_rows(path, summary_columns(comparison), summary_rows(comparison))


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
    document = comparison_document_head(comparison)
    document["scenarios"] = scenarios
    return document


def comparison_document_v2(comparison: Comparison) -> dict[str, Any]:
    """Schema 2: what :func:`comparison_document` holds, stored once per rank class (readings without their rank
    number, components, torch-cache components, skipped keys, the rank info the class's ranks share) with the
    rank-to-class map as ``[[first, last, class], ...]``, the rank info that differs within a class as one list per
    field (``rank_info_columns``, in rank order), and each plan's rank lists once per layout (``plans``)."""
    plans: dict[str, dict[str, list[list[int]]]] = {}
    scenarios = [_scenario_v2(item, plans) for item in comparison.runs]
    document = comparison_document_head(comparison)
    document.update({"schema_version": 2, "plans": plans, "scenarios": scenarios})
    return document


def comparison_document_head(comparison: Comparison) -> dict[str, Any]:
    """The top-level keys every schema holds besides ``scenarios``: identity, baseline, estimate marker, fidelity."""
    document: dict[str, Any] = {"schema_version": JSON_SCHEMA_VERSION, "comparison_id": comparison.comparison_id,
                                "baseline": comparison.baseline, "units": "bytes"}
    estimated = [item.run for item in comparison.runs if item.run.record.source == "estimated"]
    if estimated:  # memprobe estimate: say so at the top, with what the numbers were made from
        document["estimate"] = {"estimated": True, "measured": False, **estimated[0].record.environment.get("estimate", {})}
    fidelity = fidelity_document(comparison)
    if fidelity:  # only comparisons run with --engine memprobe,sglang
        document["fidelity"] = fidelity
    return document


def _scenario_v2(item: Any, plans: dict[str, dict[str, list[list[int]]]]) -> dict[str, Any]:
    run = item.run
    table = rank_table(run)
    record = run.record
    document = replace(record, ranks=[], plan=[]).as_document()
    document["plan"] = [{"name": group.name, "alias_of": group.alias_of, "communicators": dict(group.communicators)}
                        for group in record.plan]
    document["plan_ranks"] = _plan_key(item.scenario.layout.slug(), {group.name: group.ranks for group in record.plan}, plans)
    classes = [{"ranks": len(rank_class.ranks),
                "readings": [_without_rank(reading) for reading in rank_class.readings],
                **rank_class.derived("json_parts", _class_parts)} for rank_class in table.classes]
    scenario = {
        "name": item.scenario.name, "definition": item.scenario.definition(),
        "definition_hash": item.scenario.definition_hash(),
        "run_path": None if run.path is None else str(run.path), "run": document,
        "nccl_account": nccl_account_document(run), "classes": classes, "rank_classes": table.ranges(),
    }
    infos = {info.rank: info for info in record.ranks}
    if set(infos) == set(table.class_of) and len(infos) == len(record.ranks):
        shared, columns = _rank_info_by_class(table, infos)
        for entry, info in zip(classes, shared):
            entry["rank_info"] = info
        scenario["rank_info_columns"] = columns
    else:  # rank info and readings of different ranks (a run that stopped early): every rank's info, as schema 1
        document["ranks"] = [asdict(info) for info in record.ranks]
    return scenario


def _plan_key(slug: str, ranks: dict[str, list[list[int]]], plans: dict[str, dict[str, list[list[int]]]]) -> str:
    """The key of ``ranks`` in ``plans`` (the layout's slug; a suffix where one slug has other rank lists)."""
    key, suffix = slug, 2
    while key in plans and plans[key] != ranks:
        key, suffix = f"{slug}-{suffix}", suffix + 1
    plans[key] = ranks
    return key


def _without_rank(reading: Any) -> dict[str, Any]:
    row = reading.as_row()
    del row["rank"]
    return row


def _class_parts(readings: list[Any]) -> dict[str, Any]:
    """A class's components (all bytes, the torch-cache part) with skipped steps null, and its skipped keys."""
    skipped = skipped_keys(readings)

    def shown(parts: dict[str, Any]) -> dict[str, Any]:
        return {key: None if key in skipped else value for key, value in parts.items()}

    return {"components": shown(rank_components(readings)), "torch_cache": shown(rank_components(readings, torch_cache)),
            "skipped": sorted(skipped)}


_INFO_FIELDS = tuple(f.name for f in fields(RankInfo) if f.name != "rank")


def _rank_info_by_class(table: Any, infos: dict[int, Any]) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """(per class: the rank-info fields all its ranks share; per field that differs within a class: every rank's
    value, in rank order)."""
    varying: set[str] = set()
    for rank_class in table.classes:
        first = infos[rank_class.ranks[0]].__dict__
        for rank in rank_class.ranks[1:]:
            other = infos[rank].__dict__
            for name in _INFO_FIELDS:
                if name not in varying and other[name] != first[name]:
                    varying.add(name)
    names = [name for name in _INFO_FIELDS if name in varying]
    shared = [{name: _plain(infos[rank_class.ranks[0]].__dict__[name]) for name in _INFO_FIELDS if name not in varying}
              for rank_class in table.classes]
    columns = {name: [_plain(infos[rank].__dict__[name]) for rank in table.class_of] for name in names}
    return shared, columns


def _plain(value: Any) -> Any:
    return {key: dict(inner) for key, inner in value.items()} if isinstance(value, dict) else \
        list(value) if isinstance(value, list) else value


def write_json(comparison: Comparison, path: str | Path, *, schema: int = 2) -> None:
    """The comparison as JSON with sorted keys, written atomically: schema 2 (:func:`comparison_document_v2`,
    compact) by default; schema 1 (:func:`comparison_document`, indented, every rank in full) when asked, kept for
    one release."""
    if schema == 1:
        atomic_write_text(path, json.dumps(comparison_document(comparison), indent=2, sort_keys=True) + "\n")
        return
    if schema != 2:
        raise ValueError(f"JSON schema {schema}: memprobe writes 1 or 2")
    # compact separators: json's C encoder (an indent drops to the pure-Python one, 20x slower on 4096 ranks)
    atomic_write_text(path, json.dumps(comparison_document_v2(comparison), sort_keys=True, separators=(",", ":")) + "\n")


# --------------------------------------------------------------------------- Markdown


def _escape(cell: str) -> str:
    """Text safe in a GitHub Markdown table cell or line (``|`` splits cells; ``<group>`` would vanish as HTML; a line
    break in a name ends the table, and a ``#`` starting the next line would make it a heading)."""
    # only what GitHub would read as HTML is escaped, so that "<0.1" stays readable in the raw file
    cell = re.sub(r"[\r\n\v\f\x85\u2028\u2029]+", " ", cell)
    cell = re.sub(r"^(\s*)#", r"\1\\#", cell)
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
    "comparison_document_v2",
    "long_rows",
    "summary_rows",
    "write_rows",
    "long_dataframe",
    "render_markdown",
    "summary_columns",
    "summary_dataframe",
    "write_csv",
    "write_json",
    "write_markdown",
    "write_summary_csv",
]

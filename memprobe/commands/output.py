"""What the commands print and write from the API's values: tables to stdout, warnings to stderr, exports
(checked before anything is launched)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from memprobe.errors import UsageError
from memprobe.paths import check_output_path
from memprobe.reports._format import PipeWidth

WIDE_OUTPUT = 200  # files and pipes: every column


def console_width() -> int:
    """$COLUMNS when set, else the terminal's real width on a terminal, else wide for files and pipes, where titles
    and notes are one line each, however long (:class:`PipeWidth`)."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return max(60, int(columns))
    if sys.stdout.isatty():
        return max(60, shutil.get_terminal_size((WIDE_OUTPUT, 24)).columns)
    return PipeWidth(WIDE_OUTPUT)


def named_runs(comparison: Any) -> list[tuple[str, Any]]:
    return [(item.scenario.name, item.run) for item in comparison.runs]


def print_rank_warnings(runs: list[tuple[str, Any]]) -> None:
    """What workers warned about (a GPU shared with other processes, device-level fallback), once each."""
    seen: set[str] = set()
    for name, run in runs:
        for info in run.record.ranks:
            for warning in info.warnings:
                line = f"memprobe: warning: {name} rank {info.rank}: {warning}"
                if warning not in seen:
                    seen.add(warning)
                    print(line, file=sys.stderr)


def check_exports(csv_path: Optional[Path], summary_csv: Optional[Path], json_path: Optional[Path],
                  markdown: Optional[Path], plot_path: Optional[Path], json_schema: int = 2) -> None:
    if json_schema not in (1, 2):
        raise UsageError(f"--json-schema must be 1 or 2, got {json_schema}")
    taken: dict[Path, str] = {}
    for path, option, suffixes in ((csv_path, "--csv", (".csv",)), (summary_csv, "--summary-csv", (".csv",)),
                                   (json_path, "--json", (".json",)), (markdown, "--markdown", (".md", ".markdown")),
                                   (plot_path, "--plot", (".png", ".svg"))):
        check_output_path(path, option, suffixes=suffixes, taken=taken)
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401  (only checks that the plot extra is installed)
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install matplotlib (the plot extra, 'memprobe-llm[plot]')") from None


def render_and_export(comparison: Any, per_rank: bool, csv_path: Optional[Path], summary_csv: Optional[Path],
                      json_path: Optional[Path], markdown: Optional[Path], plot_path: Optional[Path], *,
                      all_ranks: bool = False, json_schema: int = 2) -> None:
    from memprobe import reports
    from memprobe.reports.fidelity import render_fidelity

    reports.render_comparison(comparison, sys.stdout, width=console_width(), per_rank=per_rank, all_ranks=all_ranks)
    render_fidelity(comparison, sys.stdout)
    print_rank_warnings(named_runs(comparison))
    exports = ((csv_path, "write_csv"), (summary_csv, "write_summary_csv"), (json_path, "write_json"),
               (markdown, "write_markdown"), (plot_path, "write_plot"))
    written = []
    for path, writer in exports:
        if path:  # the writer is looked up only when asked for: the exports import pandas
            if writer == "write_json":
                reports.write_json(comparison, path, schema=json_schema)
            else:
                getattr(reports, writer)(comparison, path)
            written.append(str(path))
    if written:
        from memprobe.verbosity import info

        info(f"memprobe: wrote {', '.join(written)}")


def show_attribution(runs: list[tuple[str, Any]], split: bool, nccl: Optional[bool], per_rank: bool) -> None:
    """``--split``: each run's steps split into torch cache and the rest. NCCL's account of each communicator:
    with ``nccl`` True always (saying when a run has no logs), with None wherever the run has NCCL logs."""
    from memprobe.analysis.nccl_account import has_logs
    from memprobe.reports.nccl_account import render_nccl_account
    from memprobe.reports.split_table import render_split

    for name, run in runs:
        if split:
            print(f"\n{name}:", file=sys.stdout)
            render_split(run, sys.stdout, width=console_width(), per_rank=per_rank)
        if nccl or (nccl is None and has_logs(run)):
            print(f"\n{name}:", file=sys.stdout)
            render_nccl_account(run, sys.stdout, width=max(console_width(), 170))


def render_timings_of(runs: list[tuple[str, Any]]) -> None:
    from memprobe.reports.timings import render_timings

    for name, run in runs:
        render_timings(name, run.record, sys.stdout)

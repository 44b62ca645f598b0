"""``memprobe report``: re-render saved runs and comparisons anywhere, without GPUs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from memprobe.commands.common import (
    ENV, PER_RANK, TIMINGS, check_exports, console_width, print_rank_warnings, render_and_export, render_timings_of,
)

def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run or comparison folders written by memprobe run/compare.", show_default=False),
    per_rank: bool = PER_RANK,
    timings: bool = TIMINGS,
    csv_path: Optional[Path] = typer.Option(None, "--csv", envvar=ENV + "CSV", help="Long CSV export."),
    summary_csv: Optional[Path] = typer.Option(None, "--summary-csv", envvar=ENV + "SUMMARY_CSV", help="Per scenario and rank CSV."),
    json_path: Optional[Path] = typer.Option(None, "--json", envvar=ENV + "JSON", help="Everything as JSON."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", envvar=ENV + "MARKDOWN", help="GitHub Markdown table."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", envvar=ENV + "PLOT", help="Stacked bars (.png or .svg)."),
) -> int:
    """Re-render saved runs (table, CSV, JSON, Markdown, plot) on any machine, without GPUs.

    Example: memprobe report results/h100x4-compare-tp4-ep2 --markdown table.md
    """
    from memprobe.model.comparison import load_comparison, merge_comparisons

    check_exports(csv_path, summary_csv, json_path, markdown, plot_path)
    comparisons = [load_comparison(path) for path in run_dirs]
    comparison = merge_comparisons(comparisons)
    if len(comparison.runs) == 1 and not any((csv_path, summary_csv, json_path, markdown, plot_path)):
        from memprobe.reports import render_run

        render_run(comparison.runs[0].run, sys.stdout, width=console_width(), per_rank=per_rank)
        print_rank_warnings([(comparison.runs[0].scenario.name, comparison.runs[0].run)])
    else:
        render_and_export(comparison, per_rank, csv_path, summary_csv, json_path, markdown, plot_path)
    if timings:
        render_timings_of([(item.scenario.name, item.run) for item in comparison.runs])
    return 0

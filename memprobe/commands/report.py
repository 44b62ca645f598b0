"""``memprobe report``: re-render saved runs and comparisons anywhere, without GPUs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from memprobe.commands.common import (
    ENV, PER_RANK, QUIET, SPLIT, TIMINGS, VERBOSE, check_exports, console_width, print_rank_warnings, render_and_export, render_timings_of,
    show_attribution,
)
from memprobe.errors import MeasurementError

def report(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="Run or comparison folders written by memprobe run/compare.", show_default=False),
    per_rank: bool = PER_RANK,
    csv_path: Optional[Path] = typer.Option(None, "--csv", envvar=ENV + "REPORT_CSV", help="Long CSV export."),
    summary_csv: Optional[Path] = typer.Option(None, "--summary-csv", envvar=ENV + "REPORT_SUMMARY_CSV", help="Per scenario and rank CSV."),
    json_path: Optional[Path] = typer.Option(None, "--json", envvar=ENV + "REPORT_JSON", help="Everything as JSON."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", envvar=ENV + "REPORT_MARKDOWN", help="GitHub Markdown table."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", envvar=ENV + "REPORT_PLOT", help="Stacked bars (.png or .svg)."),
    split: bool = SPLIT,
    nccl: Optional[bool] = typer.Option(None, "--nccl/--no-nccl", envvar=ENV + "REPORT_NCCL", show_default=False,
                                        help="NCCL's account of each communicator from the run's NCCL logs (run --nccl-log); "
                                             "default: shown when the logs exist."),
    timings: bool = TIMINGS,
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> int:
    """Re-render saved runs (table, CSV, JSON, Markdown, plot) on any machine, without GPUs.

    Examples:

    \b
      memprobe report results/h200x4-20261127/compare-tp4-ep2
      memprobe report results/h200x4-20261127/compare-tp4-ep2 --markdown /tmp/table.md

    Exit codes: 0 ok, 2 bad input (a path that is not a run or comparison folder, an export path that cannot be
    written), 3 a scenario of the comparison has no saved run (the others are shown).
    """
    from memprobe.model.comparison import load_comparison, merge_comparisons

    check_exports(csv_path, summary_csv, json_path, markdown, plot_path)
    comparisons = [load_comparison(path) for path in run_dirs]
    from memprobe.verbosity import detail

    for path, loaded in zip(run_dirs, comparisons):
        detail(f"memprobe: read {path}: {', '.join(loaded.names())}")
    comparison = merge_comparisons(comparisons)
    single = (len(comparison.runs) == 1 and not comparison.missing
              and not any((csv_path, summary_csv, json_path, markdown, plot_path)))
    if single:
        from memprobe.reports import render_run

        render_run(comparison.runs[0].run, sys.stdout, width=console_width(), per_rank=per_rank)
    else:
        render_and_export(comparison, per_rank, csv_path, summary_csv, json_path, markdown, plot_path)
    runs = [(item.scenario.name, item.run) for item in comparison.runs]
    show_attribution(runs, split, False if nccl is None and not single else nccl, per_rank)
    if timings:
        render_timings_of(runs)
    if single:  # render_and_export prints them itself
        print_rank_warnings(runs)
    if comparison.missing:  # what is shown is incomplete: say so and fail (issue 15)
        raise MeasurementError(f"{len(comparison.missing)} scenario(s) of the comparison have no finished run and are "
                               f"not shown (nor anything compared with them): {'; '.join(comparison.missing)}")
    unfinished = [(name, run) for name, run in runs if run.record.status != "complete"]
    if unfinished:  # shown as far as it got, never as a complete measurement
        name, run = unfinished[0]
        why = run.record.failure.describe() if run.record.failure else f"status {run.record.status}"
        raise MeasurementError(f"{run.path}/run.json: {name} is incomplete ({why}); the table shows only what was "
                               f"measured before it stopped" + (f" ({len(unfinished)} such runs)" if len(unfinished) > 1 else ""))
    return 0

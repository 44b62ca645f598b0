"""``memprobe report``: re-render saved runs and comparisons anywhere, without GPUs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from memprobe import api
from memprobe.commands.options import ALL_RANKS, JSON_SCHEMA, PER_RANK, QUIET, SPLIT, TIMINGS, VERBOSE, option
from memprobe.commands.output import (
    check_exports, console_width, named_runs, print_rank_warnings, render_and_export, render_timings_of, show_attribution,
)
from memprobe.errors import MeasurementError
from memprobe.paths import refuse_writing_inputs

def report(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="Run or comparison folders written by memprobe run/compare.", show_default=False),
    per_rank: bool = PER_RANK, all_ranks: bool = ALL_RANKS, json_schema: int = JSON_SCHEMA,
    csv_path: Optional[Path] = option(None, "--csv", env="REPORT_CSV", help="Long CSV export."),
    summary_csv: Optional[Path] = option(None, "--summary-csv", env="REPORT_SUMMARY_CSV", help="Per scenario and rank CSV."),
    json_path: Optional[Path] = option(None, "--json", env="REPORT_JSON", help="Everything as JSON."),
    markdown: Optional[Path] = option(None, "--markdown", env="REPORT_MARKDOWN", help="GitHub Markdown table."),
    plot_path: Optional[Path] = option(None, "--plot", env="REPORT_PLOT", help="Stacked bars (.png or .svg)."),
    split: bool = SPLIT,
    nccl: Optional[bool] = option(None, "--nccl/--no-nccl", env="REPORT_NCCL", show_default=False,
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
    written, or inside a folder it reports on), 3 a scenario of the comparison has no saved run (the others are
    shown), 4 folders holding different kinds of memory (GPU, host RSS, estimated). Every command: 70 an unexpected
    error (one line; its traceback in a temp file), 129/130/143 hung up, interrupted, terminated, 141 standard
    output's reader went away.
    """
    check_exports(csv_path, summary_csv, json_path, markdown, plot_path, json_schema)
    refuse_writing_inputs({"--csv": csv_path, "--summary-csv": summary_csv, "--json": json_path, "--markdown": markdown,
                           "--plot": plot_path}, list(run_dirs))
    comparison = api.load(*run_dirs)
    single = (len(comparison.runs) == 1 and not comparison.missing
              and not any((csv_path, summary_csv, json_path, markdown, plot_path)))
    if single:
        from memprobe.reports import render_run

        render_run(comparison.runs[0].run, sys.stdout, width=console_width(), per_rank=per_rank)
    else:
        render_and_export(comparison, per_rank, csv_path, summary_csv, json_path, markdown, plot_path,
                      all_ranks=all_ranks, json_schema=json_schema)
    runs = named_runs(comparison)
    show_attribution(runs, split, False if nccl is None and not single else nccl, per_rank)
    if timings:
        render_timings_of(runs)
    if single:  # render_and_export prints them itself
        print_rank_warnings(runs)
    if comparison.missing:  # what is shown is incomplete: say so and fail
        raise MeasurementError(f"{len(comparison.missing)} scenario(s) of the comparison have no finished run and are "
                               f"not shown (nor anything compared with them): {'; '.join(comparison.missing)}")
    unfinished = [(name, run) for name, run in runs if run.record.status != "complete"]
    if unfinished:  # shown as far as it got, never as a complete measurement
        name, run = unfinished[0]
        why = run.record.failure.describe() if run.record.failure else f"status {run.record.status}"
        raise MeasurementError(f"{run.path}/run.json: {name} is incomplete ({why}); the table shows only what was "
                               f"measured before it stopped" + (f" ({len(unfinished)} such runs)" if len(unfinished) > 1 else ""))
    return 0

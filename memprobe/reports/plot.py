"""A stacked bar chart of a comparison: one bar per scenario (its worst rank), one segment per part.

matplotlib is optional (``pip install matplotlib``, or the ``memprobe-llm[plot]`` extra) and imported only when a plot is asked
for. The figure is drawn on an Agg canvas object (no pyplot, no global backend switch, no display
needed) and written atomically.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprobe.errors import UsageError
from memprobe.model.records import atomic_write_bytes
from memprobe.units import MIB, UNIT, mib_unit
from memprobe import engines
from memprobe.model.steps import GROUPS_CREATED, group_init_steps, is_group_init_step
from memprobe.reports._model import (
    ScenarioSummary,
    built_group_names,
    measured_memory,
    summarize,
)
from memprobe.model.comparison import Comparison

PLOT_SUFFIXES: tuple[str, ...] = (".png", ".svg")
MISSING_MATPLOTLIB = "--plot needs matplotlib: pip install matplotlib (the plot extra, 'memprobe-llm[plot]')"
_KIND_ALPHAS = (1.0, 0.6, 0.8, 0.45)  # the engine's communicator kinds, in its order
_GROUPS_CREATED_ALPHA = 0.35


@dataclass(frozen=True)
class Segment:
    key: str  # component key, as in memprobe.analysis.attribution
    label: str
    color: str
    alpha: float = 1.0
    hatch: str | None = None


AT_START = "at_start"  # plot-only part: the reading before the first step (host RSS of Python + torch on CPU)


def _add_start_parts(summaries: list[ScenarioSummary]) -> None:
    """Give each worst rank an ``at_start`` part, so that a bar's height is its total, not only what the
    steps added (on CPU the process holds ~0.5 GiB before any step: an axis of the steps alone would read
    0-3.5 MiB under a 515 MiB label)."""
    for summary in summaries:
        worst = summary.worst
        if worst is None or worst.total_after_first_use is None:
            continue
        step_parts = [value for key, value in worst.parts.items()
                      if key in ("cuda_context", "world", "unattributed") or key.endswith("/first_use")
                      or ("/" in key and is_group_init_step(key.rsplit("/", 1)[-1]))]
        known = [value for value in step_parts if value is not None]
        if len(known) == len(step_parts):
            worst.parts[AT_START] = worst.total_after_first_use - sum(known)


def _segments(summaries: list[ScenarioSummary], palette: list[str]) -> list[Segment]:
    """Parts in stacking order; a part that is 0 bytes in every bar is left out."""
    groups = built_group_names(summaries)
    colors = {name: palette[index % len(palette)] for index, name in enumerate(["world", *groups])}
    candidates = [Segment(AT_START, "process at start (before any step)", "#c7c7c7"),
                  Segment("cuda_context", "CUDA context", "#7f7f7f"), Segment("world", "world", colors["world"])]
    kinds = engines.kinds(summary.item.run.record.engine for summary in summaries)
    labels = {GROUPS_CREATED: "groups created", **{kind.name: kind.label for kind in kinds}}
    alphas = {GROUPS_CREATED: _GROUPS_CREATED_ALPHA,
              **{kind.name: _KIND_ALPHAS[index % len(_KIND_ALPHAS)] for index, kind in enumerate(kinds)}}
    for name in groups:
        for step in group_init_steps([kind.name for kind in kinds]):
            candidates.append(Segment(f"{name}/{step}", f"{name} {labels[step]}", colors[name], alphas[step]))
    for name in ["world", *groups]:
        candidates.append(Segment(f"{name}/first_use", f"{name} first use", colors[name], 0.45, "//"))
    candidates.append(Segment("unattributed", "between steps", "#bcbd22", 0.5, ".."))

    def matters(segment: Segment) -> bool:
        for summary in summaries:
            worst = summary.worst
            if worst is not None and worst.parts.get(segment.key, 0) != 0:
                return True
        return False

    return [segment for segment in candidates if matters(segment)]


def write_plot(comparison: Comparison, path: str | Path) -> None:
    """Write a stacked bar chart of ``comparison`` (worst rank per scenario) to a ``.png`` or ``.svg`` file.

    Raises:
        UsageError: the suffix is neither .png nor .svg, or matplotlib is not installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise UsageError(f"--plot {path}: the file name must end in .png or .svg")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(MISSING_MATPLOTLIB) from None

    summaries = summarize(comparison)
    _add_start_parts(summaries)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    segments = _segments(summaries, palette)
    figure = Figure(figsize=(max(6.0, 1.6 * len(summaries) + 4.0), 6.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    tops = _stack_bars(axes, summaries, segments)
    _label_bars(axes, summaries, segments, tops)
    _decorate(axes, comparison, summaries)
    buffer = io.BytesIO()
    metadata = {"Date": None} if suffix == ".svg" else {"Software": None}
    figure.savefig(buffer, format=suffix[1:], metadata=metadata)
    atomic_write_bytes(path, buffer.getvalue())


def _stack_bars(axes: Any, summaries: list[ScenarioSummary], segments: list[Segment]) -> list[float]:
    """One stacked bar per scenario (its worst rank), positive parts up, negative down; returns the bar tops."""
    positive = [0.0] * len(summaries)
    negative = [0.0] * len(summaries)
    for segment in segments:
        heights, bottoms = [], []
        for index, summary in enumerate(summaries):
            worst = summary.worst
            value = None if worst is None else worst.parts.get(segment.key)
            height = 0.0 if value is None else value / MIB
            if height >= 0:
                bottoms.append(positive[index])
                positive[index] += height
            else:
                bottoms.append(negative[index])
                negative[index] += height
            heights.append(height)
        axes.bar(list(range(len(summaries))), heights, bottom=bottoms, width=0.6, label=segment.label, color=segment.color,
                 alpha=segment.alpha, hatch=segment.hatch, edgecolor="white", linewidth=0.5)
    return positive


def _label_bars(axes: Any, summaries: list[ScenarioSummary], segments: list[Segment], tops: list[float]) -> None:
    for index, summary in enumerate(summaries):
        worst = summary.worst
        total = None if worst is None else worst.total_after_first_use
        # a part the scenario does not have (an alias group) is absent; one it has but could not measure is None
        missing = worst is None or any(segment.key in worst.parts and worst.parts[segment.key] is None for segment in segments)
        label = mib_unit(total) + (" (some parts n/a)" if missing else "")
        axes.annotate(label, (index, tops[index]), xytext=(0, 3), textcoords="offset points",
                      ha="center", va="bottom", fontsize=8)


def _decorate(axes: Any, comparison: Comparison, summaries: list[ScenarioSummary]) -> None:
    axes.set_xticks(list(range(len(summaries))))
    axes.set_xticklabels(
        [f"{s.name}\n{s.item.scenario.stack}, rank {s.worst_rank if s.worst_rank is not None else 'n/a'}" for s in summaries],
        fontsize=8,
    )
    axes.set_xlabel("scenario (worst rank: largest total after first use)")
    memory = measured_memory([summary.item.run for summary in summaries])
    axes.set_ylabel(f"{memory}, {UNIT} (2^20 bytes)")
    axes.set_title(f"memprobe {comparison.comparison_id}\n{memory} per part after first use (baseline {comparison.baseline})",
                   fontsize=10)  # two lines: a default comparison id alone is ~50 characters
    axes.axhline(0, color="black", linewidth=0.6)
    axes.margins(y=0.08)
    handles, labels = axes.get_legend_handles_labels()  # top of the stack first, as the bars read
    axes.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

__all__ = ["MISSING_MATPLOTLIB", "PLOT_SUFFIXES", "write_plot"]

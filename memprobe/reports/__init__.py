"""Reports of runs and comparisons: Rich tables, CSV/JSON/Markdown exports and a plot.

Bytes are integers up to here; these modules turn them into MiB text (binary, ``MiB`` = 2**20
bytes) and show a missing value as ``n/a``, never as 0. Text renderers write to the stream they
are given, at a fixed width, so their output is the same on any terminal (golden-file tested).

pandas is imported by :mod:`memprobe.reports.exports`' DataFrame functions only (the export files need
none), and matplotlib only inside :func:`write_plot`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memprobe.reports.compare_table import render_comparison

if TYPE_CHECKING:  # pragma: no cover
    from memprobe.reports.plot import write_plot  # noqa: F401
    from memprobe.reports.run_table import render_run  # noqa: F401
    from memprobe.reports.exports import (  # noqa: F401
        long_dataframe,
        render_markdown,
        summary_dataframe,
        write_csv,
        write_json,
        write_markdown,
        write_summary_csv,
    )

_EXPORTS = (
    "long_dataframe",
    "render_markdown",
    "summary_dataframe",
    "write_csv",
    "write_json",
    "write_markdown",
    "write_summary_csv",
)


_LAZY = {"write_plot": "memprobe.reports.plot", "render_run": "memprobe.reports.run_table",
         **{name: "memprobe.reports.exports" for name in _EXPORTS}}


def __getattr__(name: str) -> Any:
    """Load the exports (pandas), the plot and the one-run table on first use: a comparison's table pays for neither."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["render_comparison", "render_run", "write_plot", *_EXPORTS]

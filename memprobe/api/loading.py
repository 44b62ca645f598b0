"""load: saved runs and comparisons, as the report command reads them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from memprobe.errors import UsageError
from memprobe.fields import as_path

if TYPE_CHECKING:
    from memprobe.model.comparison import Comparison

__all__ = ["load"]


def load(*paths: "str | os.PathLike[str]") -> "Comparison":
    """Saved runs and comparisons (folders written by run or compare, or their ``--json`` exports), as one comparison.

    A scenario of a comparison without a finished run is listed in ``missing``, not raised.

    >>> comparison = load("results/h200x4-20261127/compare-tp4-ep2")
    >>> comparison.baseline
    'tp4'
    """
    from memprobe.model.comparison import load_comparison, merge_comparisons
    from memprobe.verbosity import detail

    if not paths:
        raise UsageError("give at least one run or comparison folder")
    folders = [as_path(path, "load: a run or comparison folder") for path in paths]
    comparisons = [load_comparison(folder) for folder in folders]
    for path, loaded in zip(folders, comparisons):
        detail(f"memprobe: read {path}: {', '.join(loaded.names())}")
    return merge_comparisons(comparisons)

"""Where an installed engine's package lies, read from the file system only: the parent CLI never imports an
engine (its import chain pulls torch and, on a GPU machine, initialises CUDA)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def package_on_path(environ: dict[str, str], package: str) -> Path | None:
    """The ``package`` folder the workers' ``PYTHONPATH`` (then this interpreter's path) leads to; None if none."""
    search = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p] + sys.path
    for folder in search:
        candidate = Path(folder) / package / "__init__.py"
        if candidate.is_file():
            return candidate.parent
    found = importlib.util.find_spec(package)
    return Path(found.origin).parent if found is not None and found.origin else None


def site_first(environ: dict[str, str], site: str) -> dict[str, str]:
    """``environ`` with ``site`` first on ``PYTHONPATH`` (the workers import the engine installed there); as given
    for "" (the importable engine)."""
    if not site:
        return environ
    return {**environ, "PYTHONPATH": os.pathsep.join(p for p in (site, environ.get("PYTHONPATH", "")) if p)}


def site_holding(path: str, package: str, marker: str) -> str | None:
    """``path`` made absolute if it is a site folder holding ``package/marker``, else None."""
    return str(Path(path).resolve()) if (Path(path) / package / marker).is_file() else None


__all__ = ["package_on_path", "site_first", "site_holding"]

"""What a CPU runner installs to run SGLang's own group code, and the ``pip`` line that fixes a missing piece.

``pip install --no-deps sglang==X`` gives SGLang's sources; its full dependency set cannot be installed on a CPU
runner (it pins a CUDA torch and GPU-only kernels). Most of what its import chain names is stood in by memprobe
(:mod:`memprobe.engines.sglang.standins`); these five of SGLang's own dependencies really run, or define the
classes that run, while the groups are built, so they are installed for real (small CPU wheels, memprobe's
``sglang`` extra). Checked on SGLang 0.5.10.post1, 0.5.11 and 0.5.23 with torch 2.13 (CPU):

* ``msgspec``: 0.5.23's ``server_args`` collects the parallel widths with ``msgspec.structs.fields``;
* ``pyzmq`` (``zmq``): every ``GroupCoordinator`` of width > 1 builds its message-queue broadcaster over zmq;
* ``pydantic``: the ``BaseModel`` classes of the modules ``parallel_state`` imports;
* ``pillow`` (``PIL``): ``srt/utils/common.py`` imports ``PIL.Image`` at module level;
* ``packaging``: version checks at module level (``packaging.version``).

Checked by hiding every other package of the test interpreter: with memprobe's own dependencies and these, all three
releases build their groups on CPU; without ``packaging``, 0.5.23's ranks fail at import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: import name -> pip requirement (the versions SGLang 0.5.23 asks for, where it pins one)
REQUIREMENTS: dict[str, str] = {"msgspec": "msgspec", "zmq": "pyzmq>=25.1.2", "pydantic": "pydantic", "PIL": "pillow",
                                 "packaging": "packaging"}
EXTRA = ".[sglang]"  # memprobe's extra, installed from its clone (memprobe-llm is not on PyPI)


def install_sglang_line(version: str = "") -> str:
    """The pip line that installs SGLang's sources on a CPU runner (``version`` pinned where known)."""
    return f"python -m pip install --no-deps sglang{'==' + version if version and version != 'unknown' else ''}"


def _importable(name: str, search: list[str]) -> bool:
    return any((Path(folder) / name).is_dir() or (Path(folder) / f"{name}.py").is_file() or
               any(Path(folder).glob(f"{name}.*.so")) for folder in search if folder)


def missing_requirements(environ: dict[str, str]) -> list[str]:
    """The requirements the workers of ``environ`` cannot import (read from their path, nothing imported)."""
    search = environ.get("PYTHONPATH", "").split(os.pathsep) + sys.path
    return [requirement for name, requirement in REQUIREMENTS.items() if not _importable(name, search)]


def requirements_problem(environ: dict[str, str], version: str) -> str | None:
    """One line naming what is missing and the pip line that installs it, or None."""
    missing = missing_requirements(environ)
    if not missing:
        return None
    return (f"--engine sglang on CPU: SGLang {version}'s group code needs {', '.join(missing)}, not installed here; "
            f"install them: python -m pip install {' '.join(repr(m) if '>' in m else m for m in missing)}"
            f" (or, in memprobe's clone, pip install -e '{EXTRA}')")


__all__ = ["EXTRA", "REQUIREMENTS", "install_sglang_line", "missing_requirements", "requirements_problem"]

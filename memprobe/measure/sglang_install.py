"""Which SGLang a scenario will import, and which parallel-state API it has: read from its source files,
never imported (the parent CLI imports neither torch nor SGLang).

Two API styles are known, read from the sources of these releases:

* ``kwargs`` (0.5.10.post1, 0.5.11; 0.5.9 and 0.5.12 have it too): ``initialize_model_parallel`` takes
  the widths as keywords (``tensor_model_parallel_size=...``); ``dispatch_custom_allreduce()`` takes no
  arguments and picks v1 unless ``SGLANG_USE_JIT_ALL_REDUCE=1``;
* ``runtime_context`` (0.5.23): the widths are published with
  ``sglang.srt.runtime_context.get_parallel().override_permanently(...)`` and
  ``initialize_model_parallel()`` reads them; ``dispatch_custom_allreduce(group, device)`` picks v2 by default.

The worker detects the same style by signature introspection (:mod:`memprobe.measure.sglang_engine`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprobe.errors import UsageError

PARALLEL_STATE = "srt/distributed/parallel_state.py"
RUNTIME_CONTEXT = "srt/runtime_context.py"
# (file relative to the sglang package, definitions every API style needs)
REQUIRED_API = (
    (PARALLEL_STATE, ("init_distributed_environment", "initialize_model_parallel", "init_model_parallel_group",
                      "get_world_group", "set_custom_all_reduce")),
    ("srt/distributed/device_communicators/pynccl.py", ("PyNcclCommunicator",)),
    ("srt/distributed/device_communicators/custom_all_reduce.py", ("dispatch_custom_allreduce",)),
)
API_STYLES = ("kwargs", "runtime_context")


@dataclass(frozen=True)
class SGLangInstallation:
    """One SGLang as the workers will import it."""

    version: str
    package: Path  # the ``sglang`` package folder
    parallel_state_sha256: str
    api: str  # one of API_STYLES
    custom_allreduce_default: str  # "v1" (0.5.1x) or "v2" (0.5.23), with SGLang's environment defaults

    def as_record(self) -> dict[str, Any]:
        """What run.json records under ``environment["sglang"]`` (read by gate.baseline.describe_sglang)."""
        return {"version": self.version, "path": str(self.package), "parallel_state_sha256": self.parallel_state_sha256,
                "api": self.api, "custom_allreduce_default": self.custom_allreduce_default}


def check_site(path: str, given_as: str | None = None) -> str:
    """``path`` (absolute) if it is a folder holding an ``sglang`` package (a site folder), else one clear
    error naming it as the user gave it (``given_as``, default ``--sglang PATH``)."""
    if not (Path(path) / "sglang" / PARALLEL_STATE).is_file():
        raise UsageError(f"{given_as or '--sglang ' + path}: not an SGLang installation (no sglang/{PARALLEL_STATE})")
    return str(Path(path).resolve())


def find_package(environ: dict[str, str]) -> Path:
    """The ``sglang`` package the workers' ``PYTHONPATH`` (then this interpreter's path) leads to."""
    search = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p] + sys.path
    for folder in search:
        candidate = Path(folder) / "sglang" / "__init__.py"
        if candidate.is_file():
            return candidate.parent
    found = importlib.util.find_spec("sglang")
    if found is None or not found.origin:
        raise UsageError("--engine sglang needs SGLang installed (pip install sglang, or --sglang SITE_FOLDER); it was not found; "
                         "on a CPU runner: python -m pip install --no-deps sglang")
    return Path(found.origin).parent


def read_version(package: Path) -> str:
    for name in ("_version.py", "version.py"):  # setuptools-scm writes _version.py; version.py reads it
        path = package / name
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        match = re.search(r"^__version__\s*=\s*(?:\w+\s*=\s*)*(?:\w+\(\s*)?['\"]([^'\"]+)", text, re.MULTILINE)
        if match:
            return match.group(1)
    return "unknown"


def _definitions(source: str) -> dict[str, list[str]]:
    """Top-level functions and classes of a module: name -> parameter names (classes: [])."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    found: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            found[node.name] = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
        elif isinstance(node, ast.ClassDef):
            found[node.name] = []
    return found


def _read(package: Path, relative: str) -> str:
    path = package / relative
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


def _reinstall_hint(package: Path, version: str) -> str:
    """A release whose files are missing is a broken install: the pip line that reinstalls it."""
    if version == "unknown" or not (package / PARALLEL_STATE).is_file() or not any(package.parent.glob("sglang-*.dist-info")):
        return ""
    return f" (a broken install? python -m pip install --force-reinstall --no-deps sglang=={version})"


def api_style(package: Path, version: str) -> tuple[str, str]:
    """``(api style, custom all-reduce default)`` from the sources; :class:`UsageError` naming what is missing."""
    where = f"SGLang {version} ({package})"
    sources = {relative: _definitions(_read(package, relative)) for relative, _ in REQUIRED_API}
    for relative, names in REQUIRED_API:
        missing = [name for name in names if name not in sources[relative]]
        if missing:
            raise UsageError(f"--engine sglang: {where} has an unknown parallel-state API: "
                             f"{relative} lacks {', '.join(missing)}{_reinstall_hint(package, version)}")
    initialize = sources[PARALLEL_STATE]["initialize_model_parallel"]
    dispatch = sources["srt/distributed/device_communicators/custom_all_reduce.py"]["dispatch_custom_allreduce"]
    default = "v2" if dispatch else "v1"  # 0.5.23 dispatch(group, device): v2 unless disabled; 0.5.1x: v1
    if "tensor_model_parallel_size" in initialize:
        return "kwargs", default
    context = _definitions(_read(package, RUNTIME_CONTEXT))
    if "get_parallel" in context and "def override_permanently" in _read(package, RUNTIME_CONTEXT):
        return "runtime_context", default
    raise UsageError(f"--engine sglang: {where} has an unknown parallel-state API: initialize_model_parallel takes no "
                     f"tensor_model_parallel_size and {RUNTIME_CONTEXT} lacks get_parallel().override_permanently")


def sglang_installation(environ: dict[str, str] | None = None) -> SGLangInstallation:
    """The SGLang the workers of ``environ`` will import, checked without importing it (exit 2 if unusable)."""
    environ = dict(os.environ if environ is None else environ)
    package = find_package(environ)
    version = read_version(package)
    style, default = api_style(package, version)
    digest = hashlib.sha256((package / PARALLEL_STATE).read_bytes()).hexdigest()
    return SGLangInstallation(version, package, digest, style, default)

"""Which SGLang a scenario will import, and which parallel-state API it has: read from its source files,
never imported (the parent CLI imports neither torch nor SGLang).

Two API styles are known, read from the sources of these releases:

* ``kwargs`` (0.5.10.post1, 0.5.11; 0.5.9 and 0.5.12 have it too): ``initialize_model_parallel`` takes
  the widths as keywords (``tensor_model_parallel_size=...``); ``dispatch_custom_allreduce()`` takes no
  arguments and picks v1 unless ``SGLANG_USE_JIT_ALL_REDUCE=1``;
* ``runtime_context`` (0.5.23): the widths are published with
  ``sglang.srt.runtime_context.get_parallel().override_permanently(...)`` and
  ``initialize_model_parallel()`` reads them; ``dispatch_custom_allreduce(group, device)`` picks v2 by default.

The worker detects the same style by signature introspection (:mod:`memprobe.engines.sglang.real`).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from memprobe.engines.sglang.layout import MOE_GROUPS, plan_groups
from memprobe.engines.sglang.stacks import CUSTOM_ALLREDUCE_IMPL, INSTALLED
from memprobe.engines.sites import package_on_path, site_holding
from memprobe.engines.stacks import Stack
from memprobe.errors import EngineNotInstalled, UsageError
from memprobe.model.installation import EngineInstallation

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


def check_site(path: str, given_as: str | None = None) -> str:
    """``path`` (absolute) if it is a folder holding an ``sglang`` package (a site folder), else one clear
    error naming it as the user gave it (``given_as``, default ``--sglang PATH``)."""
    site = site_holding(path, "sglang", PARALLEL_STATE)
    if site is None:
        raise UsageError(f"{given_as or '--sglang ' + path}: not an SGLang installation (no sglang/{PARALLEL_STATE})")
    return site


def find_package(environ: dict[str, str]) -> Path:
    """The ``sglang`` package the workers' ``PYTHONPATH`` (then this interpreter's path) leads to."""
    found = package_on_path(environ, "sglang")
    if found is None:
        raise EngineNotInstalled("--engine sglang needs SGLang installed (pip install sglang, or --sglang SITE_FOLDER); it "
                                 "was not found; on a CPU runner: python -m pip install --no-deps sglang", "sglang",
                                 "python -m pip install --no-deps sglang")
    return found


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


def sglang_installation(environ: dict[str, str] | None = None, site: str = "") -> EngineInstallation:
    """The SGLang the workers of ``environ`` will import, checked without importing it (exit 2 if unusable)."""
    environ = dict(os.environ if environ is None else environ)
    package = find_package(environ)
    version = read_version(package)
    style, default = api_style(package, version)
    digest = hashlib.sha256((package / PARALLEL_STATE).read_bytes()).hexdigest()
    return EngineInstallation(engine="sglang", version=version, path=str(package), parallel_state_sha256=digest,
                              site=site, api=style, custom_allreduce_default=default)


# ---------------------------------------------------------------------- what a CPU run of it teaches


def learnt_stack(run: Any) -> Stack:
    """Per group, the flags real SGLang passed to ``init_model_parallel_group`` (any rank's record), and the
    custom all-reduce it builds by default (read from its sources): the stack an estimate of it builds."""
    flags: dict[str, dict[str, bool]] = {}
    for info in run.record.ranks:
        for group, decision in info.communicators.items():
            if "use_pynccl" in decision:
                flags[group] = {"pynccl": _asked(decision, "use_pynccl"),
                                "custom_allreduce": _asked(decision, "use_custom_allreduce")}
    if not flags:
        raise UsageError(f"{run.path or run.record.run_id}: the SGLang run recorded no group flags "
                         f"(expected use_pynccl / use_custom_allreduce per group)")
    sglang = EngineInstallation.from_json("sglang", run.record.environment.get("sglang"))
    implementation = str(sglang and sglang.custom_allreduce_default or "v2")
    return replace(INSTALLED, flags=flags, options={CUSTOM_ALLREDUCE_IMPL: implementation})


def _asked(decision: dict[str, str], flag: str) -> bool:
    """What SGLang asked a group for: the flag ``initialize_model_parallel`` passed ("None" is SGLang's default,
    on for both on CUDA), else (runs recorded before it was kept) the coordinator's attribute, which on a GPU is it."""
    passed = decision.get(f"passed_{flag}")
    if passed is not None:
        return passed in ("None", "True")
    return decision.get(flag) == "True"


def built_by_run(run: Any) -> dict[str, dict[str, bool]]:
    """For a real-SGLang run: per group, which communicators SGLang constructed on any rank (its ranks'
    recorded decisions; the plan's flags are the stack's, which for ``installed`` are SGLang's own)."""
    kinds = ("pynccl", "custom_allreduce")
    built: dict[str, dict[str, bool]] = {}
    for info in run.record.ranks:
        for group, decision in info.communicators.items():
            if all(kind in decision for kind in kinds):
                seen = built.setdefault(group, {kind: False for kind in kinds})
                for kind in kinds:
                    seen[kind] = seen[kind] or decision[kind] != "not built"
    return built


# ---------------------------------------------------------------------- fidelity: which reference it matches


def sglang_moe_pynccl(item: Any) -> bool | None:
    """Whether the real SGLang of ``item`` passed ``use_pynccl=True`` to the MoE groups it built (True before
    PR #22515), as its ranks recorded; ``None`` when it built no MoE group of its own (aliases only)."""
    decisions = [info.communicators[name] for info in item.run.record.ranks for name in MOE_GROUPS
                 if name in info.communicators and "use_pynccl" in info.communicators[name]]
    if not decisions:
        return None
    return any(decision["use_pynccl"] == "True" for decision in decisions)


def release_partners(item: Any, references: list[Any]) -> list[Any]:
    """The reference scenarios (same layout) whose stack gives the MoE groups what this real SGLang gave them:
    ``full`` for 0.5.10.post1, ``lean`` for 0.5.11 and 0.5.23 (decided from the run, not from its label).

    Only MoE groups with communicators of their own count (on ``--tp 2 --ep 2`` moe_ep is the tp group and
    moe_tp has width 1: any stack matches), and a stack with the release's own custom all-reduce layout
    (v1 in 0.5.1x, v2 in 0.5.23) comes first.
    """
    wanted = sglang_moe_pynccl(item)
    if wanted is None:
        return []
    plan = plan_groups(item.scenario.layout)
    own = [name for name in MOE_GROUPS if not plan.group(name).is_alias and plan.group(name).width > 1]
    sglang = EngineInstallation.from_json("sglang", (item.run.record.environment or {}).get("sglang"))
    layout = sglang.custom_allreduce_default if sglang else None
    candidates = [other for other in references
                  if other.scenario.layout == item.scenario.layout and other.scenario.resolved_stack is not None
                  and all(other.scenario.resolved_stack.flags_for(group)["pynccl"] == wanted for group in own)]
    return sorted(candidates,
                  key=lambda other: other.scenario.resolved_stack.options.get(CUSTOM_ALLREDUCE_IMPL) != layout)

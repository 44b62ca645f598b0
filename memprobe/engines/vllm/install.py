"""Which vLLM an ``--engine vllm`` scenario will import, read from its source files (the parent CLI imports neither
torch nor vLLM), and what a ``--device cpu`` run of it teaches the estimate (:func:`learnt_stack`).

Checked on vLLM 0.33.0's wheel: ``vllm/_version.py`` holds ``__version__ = version = '0.33.0'``;
``distributed/parallel_state.py`` defines what the worker calls, as ``v1/worker/gpu_worker.py:1706-1728``
(``init_worker_distributed_environment``) calls it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

from memprobe.engines.api import Decision, Verdict
from memprobe.engines.sites import package_on_path, site_holding
from memprobe.errors import EngineNotInstalled, UsageError
from memprobe.model.installation import EngineInstallation

ENGINE = "vllm"
PARALLEL_STATE = "distributed/parallel_state.py"
#: (file relative to the vllm package, top-level definitions the worker calls)
REQUIRED_API = (
    (PARALLEL_STATE, ("init_distributed_environment", "ensure_model_parallel_initialized", "set_custom_all_reduce",
                      "GroupCoordinator", "destroy_model_parallel")),
    ("distributed/device_communicators/cuda_communicator.py", ("CudaCommunicator",)),
    ("distributed/device_communicators/pynccl.py", ("PyNcclCommunicator",)),
)
#: What vLLM's group code runs on a CPU runner beside ``pip install --no-deps vllm`` (import name -> requirement):
#: the configs are pydantic dataclasses and msgspec structs, every group wider than one with a message queue
#: builds its broadcaster over zmq, ``vllm.multimodal`` imports PIL at module level, ``packaging`` checks versions,
#: and ``pynccl_allocator.py:12`` imports ``torch.utils.cpp_extension``, which imports ``setuptools`` (a dependency
#: of torch only from Python 3.12). Checked on 0.33.0 by hiding each in turn (and every other package of the test
#: interpreter that is no dependency of memprobe's): the import of ``vllm.config`` or ``parallel_state`` fails
#: without it.
REQUIREMENTS: dict[str, str] = {"msgspec": "msgspec", "zmq": "pyzmq", "pydantic": "pydantic", "PIL": "pillow",
                                 "packaging": "packaging", "setuptools": "setuptools"}
EXTRA = ".[vllm]"  # memprobe's extra, installed from its clone (memprobe-llm is not on PyPI)
#: The release memprobe's reproduction follows (``--engine vllm-ref``), the one a fix line pins by default.
TESTED_RELEASE = "0.33.0"


def install_line(version: str = "") -> str:
    """The pip line that installs vLLM's sources on a CPU runner (its full dependency set pins a CUDA torch)."""
    pinned = version if version and version not in ("unknown", "?") else TESTED_RELEASE
    return f"python -m pip install --no-deps vllm=={pinned}"


def check_site(path: str, given_as: str | None = None) -> str:
    """``path`` (absolute) if it is a folder holding a ``vllm`` package, else one line naming it as given."""
    site = site_holding(path, "vllm", PARALLEL_STATE)
    if site is None:
        raise UsageError(f"{given_as or '--vllm ' + path}: not a vLLM installation (no vllm/{PARALLEL_STATE}); "
                         f"make one with: {install_line()} --target {path}")
    return site


def find_package(environ: dict[str, str]) -> Path:
    """The ``vllm`` package the workers' ``PYTHONPATH`` (then this interpreter's path) leads to."""
    found = package_on_path(environ, "vllm")
    if found is None:
        raise EngineNotInstalled(f"--engine vllm needs vLLM installed and it was not found (--vllm SITE names a site "
                                 f"folder); install it: {install_line()} (or use --engine vllm-ref, memprobe's "
                                 f"reproduction of vLLM {TESTED_RELEASE}, which needs none)", ENGINE, install_line())
    return found


def read_version(package: Path) -> str:
    path = package / "_version.py"  # written by setuptools-scm / vcs-versioning in every wheel
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    match = re.search(r"^__version__\s*=\s*(?:\w+\s*=\s*)*['\"]([^'\"]+)", text, re.MULTILINE)
    return match.group(1) if match else "unknown"


def _top_level_names(source: str) -> set[str]:
    return set(re.findall(r"^(?:def|class)\s+(\w+)", source, re.MULTILINE))


def check_api(package: Path, version: str) -> None:
    """:class:`UsageError` naming what is missing (a broken install: the pip line that reinstalls it)."""
    for relative, names in REQUIRED_API:
        path = package / relative
        found = _top_level_names(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else set()
        missing = [name for name in names if name not in found]
        if missing:
            raise UsageError(f"--engine vllm: vLLM {version} ({package}) lacks {', '.join(missing)} in {relative} "
                             f"(a broken install? {install_line(version)} --force-reinstall)")


def vllm_installation(environ: dict[str, str] | None = None, site: str = "") -> EngineInstallation:
    """The vLLM the workers of ``environ`` will import, checked without importing it (exit 2 if unusable)."""
    environ = dict(os.environ if environ is None else environ)
    package = find_package(environ)
    version = read_version(package)
    check_api(package, version)
    digest = hashlib.sha256((package / PARALLEL_STATE).read_bytes()).hexdigest()
    return EngineInstallation(engine=ENGINE, version=version, path=str(package), parallel_state_sha256=digest,
                              site=site)


def _importable(name: str, search: list[str]) -> bool:
    return any((Path(folder) / name).is_dir() or (Path(folder) / f"{name}.py").is_file() or
               any(Path(folder).glob(f"{name}.*.so")) for folder in search if folder)


def requirements_problem(environ: dict[str, str], version: str) -> str | None:
    """One line naming what vLLM's group code needs on CPU and does not find, with the pip line; or None."""
    search = environ.get("PYTHONPATH", "").split(os.pathsep) + sys.path
    missing = [requirement for name, requirement in REQUIREMENTS.items() if not _importable(name, search)]
    if not missing:
        return None
    return (f"--engine vllm on CPU: vLLM {version}'s group code needs {', '.join(missing)}, not installed here; "
            f"install them: python -m pip install {' '.join(missing)} (or, in memprobe's clone, pip install -e '{EXTRA}')")


__all__ = ["EXTRA", "REQUIREMENTS", "check_api", "check_site", "find_package", "install_line", "read_version",
           "requirements_problem", "vllm_installation"]



# ---------------------------------------------------------------------- what a CPU run of it teaches

#: kind -> the run.json key (:mod:`memprobe.engines.vllm.real`) whose "True" says vLLM's code asked for it
_ASKED_BY: dict[str, str] = {
    "symm_mem": "vllm:use_torch_symm_mem", "flashinfer_allreduce": "vllm:use_flashinfer_allreduce",
    "custom_allreduce": "vllm:use_custom_allreduce", "custom_allreduce_mnnvl_buffer": "vllm:use_custom_allreduce",
    "all2all_manager": "vllm:use_all2all",
}


def asked_kinds(decision: dict[str, str], on_gpu: bool = False) -> dict[str, bool]:
    """Per kind, whether the installed vLLM's code asked for it on a group (one rank's recorded decisions).

    A PyNccl constructed and then disabled counts as asked for on CPU, where memprobe gives vLLM no NCCL library; on
    a GPU it was vLLM's own check that disabled it (``pynccl.py:131-137`` of 0.33.0: the library did not load, e.g.
    an NCCL without ``ncclCommSuspend``, which 0.33.0's wrapper binds and NCCL exports from 2.29.7), so nothing was
    built."""
    flags = {kind: decision.get(key) == "True" for kind, key in _ASKED_BY.items()}
    pynccl = decision.get("vllm:pynccl", "")
    flags["pynccl"] = pynccl.startswith("constructed") and not (on_gpu and "disabled" in pynccl)
    flags["mq_broadcaster"] = decision.get("vllm:use_message_queue_broadcaster") == "True"
    return flags


def release_line_of(version: str) -> str:
    """The release line whose CUDA-only rules apply to an installed release (the rules memprobe reads from it)."""
    from memprobe.engines.vllm.communicators import RELEASE_LINES

    match = re.match(r"0\.(\d+)", version)
    minor = int(match.group(1)) if match else 33
    line = "0.33" if minor >= 30 else "0.10" if minor <= 10 else "0.11-0.2x"
    return line if line in RELEASE_LINES else "0.33"


def learnt_stack(run: Any) -> Any:
    """Per group, what the installed vLLM's own code asked for in a ``--device cpu`` run (any rank's record): the
    stack an estimate of it builds; the decisions vLLM takes only on CUDA come from that release line's rules."""
    from memprobe.engines import engine as engine_named
    from memprobe.engines.stacks import new_stack
    from memprobe.engines.vllm import EP_PYNCCL, RELEASE_LINE

    flags: dict[str, dict[str, bool]] = {}
    for info in run.record.ranks:
        for group, decision in info.communicators.items():
            if "vllm:use_device_communicator" in decision:
                seen = asked_kinds(decision, on_gpu=run.record.device != "cpu")
                mine = flags.setdefault(group, {kind: False for kind in seen})
                flags[group] = {kind: mine[kind] or seen[kind] for kind in seen}
    if not flags:
        raise UsageError(f"{run.path or run.record.run_id}: the vLLM run recorded no decisions of vLLM's own "
                         f"(expected vllm:use_device_communicator per group)")
    installation = EngineInstallation.from_json(ENGINE, run.record.environment.get(ENGINE))
    version = installation.version if installation else "?"
    return new_stack(engine_named(ENGINE), "installed", flags, {RELEASE_LINE: release_line_of(version), EP_PYNCCL: "own"},
                     description=f"what the installed vLLM {version}'s code asked for, learnt from its run")


def built_by_run(run: Any) -> dict[str, dict[str, bool]]:
    """For an installed-vLLM run: per group, the kinds vLLM's code built on any rank, or asked for where the device
    builds none (``--device cpu``: a reference stack's flags say the same, and the reports show both as skipped,
    not as off), from its recorded words."""
    built: dict[str, dict[str, bool]] = {}
    for info in run.record.ranks:
        for group, decision in info.communicators.items():
            if "vllm:use_device_communicator" not in decision:
                continue
            seen = built.setdefault(group, {})
            for kind, word in decision.items():
                if not kind.startswith("vllm:"):
                    verdict = Decision.from_text(group, kind, word).verdict
                    seen[kind] = seen.get(kind, False) or verdict in (Verdict.BUILT, Verdict.NO_DEVICE)
    return built

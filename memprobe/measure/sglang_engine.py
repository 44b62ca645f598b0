"""``--engine sglang``: the installed SGLang's own ``init_distributed_environment`` and
``initialize_model_parallel``, with memprobe's samples around every group it builds (worker side).

What is wrapped (SGLang 0.5.23, ``srt/distributed/parallel_state.py``):

* ``init_model_parallel_group`` (module attribute, called by ``initialize_model_parallel``):
  ``before`` is sampled on entry; the stack's flags are forced here (``full`` = ``use_pynccl`` and
  ``use_custom_allreduce`` on ``moe_ep``/``moe_tp``; a stack file forces the flags it names);
* ``device_communicators.pynccl.PyNcclCommunicator`` and
  ``device_communicators.custom_all_reduce.dispatch_custom_allreduce`` (imported lazily inside
  ``GroupCoordinator.__init__``, so patching the module attributes reaches them): ``groups_created``
  is sampled just before the first communicator, ``pynccl`` and ``custom_allreduce`` right after each.

Steps SGLang did not take for a group are sampled too and marked ``skipped``. Everything else
(start, CUDA context, first use, end, gathering) is the reference engine's, so both engines'
readings line up step for step.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from memprobe.errors import UsageError
from memprobe.model.layout import GroupPlan
from memprobe.model.steps import GROUP_INIT_STEPS

SUPPORTED_VERSION = "0.5.23"
# (module path relative to the sglang package, names it must define) checked before launch
REQUIRED_API = (
    ("srt/distributed/parallel_state.py", ("def init_distributed_environment", "def initialize_model_parallel",
                                           "def init_model_parallel_group", "def get_world_group",
                                           "def set_custom_all_reduce")),
    ("srt/runtime_context.py", ("def get_parallel", "def override(")),
    ("srt/distributed/device_communicators/pynccl.py", ("class PyNcclCommunicator",)),
    ("srt/distributed/device_communicators/custom_all_reduce.py", ("def dispatch_custom_allreduce",)),
)
MOE_GROUPS = ("moe_ep", "moe_tp")


def installed_sglang(environ: dict[str, str] | None = None) -> tuple[str, Path]:
    """``(version, package folder)`` of the SGLang the workers will import, checked without importing it.

    Raises :class:`UsageError` (exit 2) when SGLang is missing or its API is not the one the adapter knows.
    """
    import importlib.util
    import os
    import re
    import sys

    environ = dict(os.environ if environ is None else environ)
    search = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p] + sys.path
    spec = None
    for folder in search:
        candidate = Path(folder) / "sglang" / "__init__.py"
        if candidate.is_file():
            spec = candidate.parent
            break
    if spec is None:
        found = importlib.util.find_spec("sglang")
        if found is None or not found.origin:
            raise UsageError("--engine sglang needs SGLang installed (pip install sglang==0.5.23); it was not found")
        spec = Path(found.origin).parent
    version = "unknown"
    for name in ("_version.py", "version.py"):  # setuptools-scm writes _version.py; version.py reads it
        version_file = spec / name
        text = version_file.read_text(encoding="utf-8", errors="replace") if version_file.is_file() else ""
        match = re.search(r"^__version__\s*=\s*(?:\w+\s*=\s*)*['\"]([^'\"]+)", text, re.MULTILINE)
        if match:
            version = match.group(1)
            break
    for relative, names in REQUIRED_API:
        path = spec / relative
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        missing = [name for name in names if name not in text]
        if missing:
            raise UsageError(f"--engine sglang knows SGLang {SUPPORTED_VERSION}'s API; the installed SGLang {version} "
                             f"({spec}) lacks {', '.join(missing)} in {relative}")
    return version, spec


def forced_flags(stack: Any, group_name: str) -> dict[str, bool]:
    """Flags to force on a group SGLang builds: nothing for ``lean`` (SGLang as installed)."""
    if not stack.source and stack.name.split(":")[0] == "lean":
        return {}
    if not stack.source and stack.name.split(":")[0] == "full":
        return {"use_pynccl": True, "use_custom_allreduce": True} if group_name in MOE_GROUPS else {}
    flags = stack.flags_for(group_name)
    return {"use_pynccl": flags.pynccl, "use_custom_allreduce": flags.custom_allreduce}


def sglang_widths(layout: Any) -> dict[str, Any]:
    """The parallel widths SGLang's ``initialize_model_parallel`` reads from ``get_parallel()``."""
    return {"tp_size": layout.tp, "pp_size": layout.pp, "moe_ep_size": layout.ep, "moe_dp_size": layout.moe_dp,
            "attn_dp_size": layout.attn_dp, "attn_cp_size": layout.attn_cp, "attn_dcp_size": 1,
            "shared_experts_tp_size": None, "attn_tp_size": layout.attn_tp, "moe_tp_size": layout.moe_tp}


def make_sglang_engine(base: type) -> type:
    """The SGLang engine as a subclass of the reference engine (imported lazily: torch lives there)."""

    class SGLangEngine(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Import SGLang before the first reading, so that its import cost (host memory only)
            # is not charged to a step.
            from sglang.srt.distributed import parallel_state  # noqa: F401
            from sglang.srt.distributed.device_communicators import custom_all_reduce, pynccl  # noqa: F401
            from sglang.srt.runtime_context import get_parallel  # noqa: F401

        def _world_and_groups(self) -> list[GroupPlan]:
            from sglang.srt.distributed import parallel_state as ps
            from sglang.srt.distributed.device_communicators import custom_all_reduce as car
            from sglang.srt.distributed.device_communicators import pynccl as pynccl_module
            from sglang.srt.runtime_context import get_parallel

            try:  # as SGLang's bootstrap does unless --enable-p2p-check
                from sglang.srt.utils.common import monkey_patch_p2p_access_check

                monkey_patch_p2p_access_check()
            except ImportError:
                pass
            # --device cpu: no GPU communicators (SGLang's pynccl would bind a CUDA device; its custom
            # all-reduce asserts ROCm on CPU). A missing NCCL library makes pynccl disable itself.
            if self.device_kind == "cpu":
                os.environ["SGLANG_NCCL_SO_PATH"] = "/nonexistent/libnccl.so.2"
            ps.set_custom_all_reduce(self.device_kind != "cpu")
            built: list[GroupPlan] = []
            state: dict[str, Any] = {"group": None, "done": set()}
            backend = "gloo" if self.device_kind == "cpu" else "nccl"

            def emit_until(step: str) -> None:
                """Sample every step of the current group up to ``step`` that has not been sampled yet."""
                group = state["group"]
                for name in GROUP_INIT_STEPS:
                    if name == step:
                        return
                    if name not in state["done"]:
                        state["done"].add(name)
                        if name == "groups_created":
                            self.record(name, group)
                        else:
                            self.record(name, group, status="skipped", note="not built by SGLang (flag off or width 1)")

            original_group = ps.init_model_parallel_group
            original_pynccl = pynccl_module.PyNcclCommunicator
            original_dispatch = car.dispatch_custom_allreduce

            @functools.wraps(original_group)
            def init_model_parallel_group(group_ranks: list[list[int]], *args: Any, **kwargs: Any) -> Any:
                name = kwargs.get("group_name") or "anonymous"
                kwargs.update(forced_flags(self.stack, name))
                state["group"], state["done"] = name, set()
                self.record("before", name)
                self.current = (name, "groups_created")
                coordinator = original_group(group_ranks, *args, **kwargs)
                emit_until("end")
                self.device_groups[name] = coordinator.device_group
                self.cpu_groups[name] = coordinator.cpu_group
                self.info.communicators[name] = {
                    "pynccl": "built" if getattr(coordinator, "pynccl_comm", None) is not None else "not built",
                    "custom_allreduce": type(coordinator.ca_comm).__name__ if getattr(coordinator, "ca_comm", None) else "not built",
                }
                built.append(GroupPlan(name, tuple(tuple(r) for r in group_ranks)))
                state["group"] = None
                return coordinator

            def pynccl_factory(*args: Any, **kwargs: Any) -> Any:
                emit_until("pynccl")
                self.current = (state["group"], "pynccl")
                communicator = original_pynccl(*args, **kwargs)
                state["done"].add("pynccl")
                self.record("pynccl", state["group"])
                return communicator

            def dispatch_custom_allreduce(*args: Any, **kwargs: Any) -> Any:
                emit_until("custom_allreduce")
                self.current = (state["group"], "custom_allreduce")
                try:
                    implementation = original_dispatch(*args, **kwargs)
                except Exception as error:
                    state["done"].add("custom_allreduce")
                    self.record("custom_allreduce", state["group"], status="failed", note=f"dispatch failed: {error}"[:300])
                    raise

                def construct(*c_args: Any, **c_kwargs: Any) -> Any:
                    try:
                        communicator = implementation(*c_args, **c_kwargs)
                    except Exception as error:  # SGLang logs it and goes on without custom all-reduce
                        state["done"].add("custom_allreduce")
                        self.record("custom_allreduce", state["group"], status="failed", note=f"{error}"[:300])
                        raise
                    state["done"].add("custom_allreduce")
                    note = implementation.__name__ + ("" if not getattr(communicator, "disabled", False) else " (disabled)")
                    self.record("custom_allreduce", state["group"], note=note)
                    return communicator

                return construct

            ps.init_model_parallel_group = init_model_parallel_group
            pynccl_module.PyNcclCommunicator = pynccl_factory
            car.dispatch_custom_allreduce = dispatch_custom_allreduce
            try:
                # As SGLang's launcher publishes them; a scoped override() would be gone when later
                # code (destroy_model_parallel) reads the widths.
                get_parallel().override_permanently(**sglang_widths(self.layout))
                self.current = ("world", "world")
                ps.init_distributed_environment(
                    world_size=self.world_size, rank=self.rank, local_rank=self.local_rank,
                    distributed_init_method="env://", backend=backend, timeout=int(self.timeout.total_seconds()))
                world = ps.get_world_group()
                self.device_groups["world"], self.cpu_groups["world"] = world.device_group, world.cpu_group
                self.world_cpu_group = world.cpu_group
                self._record_nccl_library()
                self.record("world", "world")
                ps.initialize_model_parallel(backend=backend)
            finally:
                ps.init_model_parallel_group = original_group
                pynccl_module.PyNcclCommunicator = original_pynccl
                car.dispatch_custom_allreduce = original_dispatch
            self._sglang = ps
            return built

        def shutdown(self) -> None:
            ps = getattr(self, "_sglang", None)
            try:
                if ps is not None and hasattr(ps, "destroy_model_parallel"):
                    ps.destroy_model_parallel()
            except Exception:  # teardown problems must not hide the readings, which are already written
                pass
            super().shutdown()

    return SGLangEngine

"""``--engine sglang``: the SGLang on the workers' path runs its own ``init_distributed_environment`` and
``initialize_model_parallel``, with memprobe's samples around every group it builds (worker side).

Per API style (:mod:`memprobe.engines.sglang.install`; detected here by signature introspection):
``kwargs`` (0.5.10.post1, 0.5.11) passes the widths to ``initialize_model_parallel``; ``runtime_context``
(0.5.23) publishes them with ``get_parallel().override_permanently`` first. What is wrapped, in every style:

* ``parallel_state.init_model_parallel_group`` (called by ``initialize_model_parallel``): ``before`` is
  sampled on entry; a stack other than ``installed`` forces its flags on every group it names;
* ``device_communicators.pynccl.PyNcclCommunicator`` and
  ``device_communicators.custom_all_reduce.dispatch_custom_allreduce`` (imported lazily inside
  ``GroupCoordinator.__init__``, so patching the module attributes reaches them; 0.5.1x calls it with no
  arguments, 0.5.23 with ``(group, device)``; both return the class that is then constructed):
  ``groups_created`` is sampled just before the first communicator, ``pynccl`` and ``custom_allreduce``
  right after each.

Steps SGLang did not take for a group are sampled too and marked ``skipped``. Everything else (start,
CUDA context, first use, end, gathering) is the recorder's (:mod:`memprobe.measure.recorder`), so the reference
and the installed SGLang's readings line up step for step.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from typing import Any, Iterator

from memprobe.engines.api import GroupPlan
from memprobe.engines.builder import GroupBuilder, GroupSteps
from memprobe.engines.sglang.layout import SGLangLayout
from memprobe.measure.rendezvous import INIT_METHOD
from memprobe.model.records import StepStatus


def forced_flags(stack: Any, group_name: str) -> dict[str, bool]:
    """Flags forced on a group SGLang builds: none for ``installed`` (SGLang's own); otherwise the stack's,
    on every group it names (``full`` on 0.5.11 restores the MoE communicators, ``lean`` on 0.5.10.post1
    emulates PR #22515)."""
    if group_name not in stack.flags:  # ``installed`` names no group
        return {}
    flags = stack.flags_for(group_name)
    return {"use_pynccl": flags["pynccl"], "use_custom_allreduce": flags["custom_allreduce"]}


def sglang_widths(layout: SGLangLayout) -> dict[str, Any]:
    """The widths 0.5.23's ``initialize_model_parallel`` reads from ``get_parallel()``."""
    return {"tp_size": layout.tp, "pp_size": layout.pp, "moe_ep_size": layout.ep, "moe_dp_size": layout.moe_dp,
            "attn_dp_size": layout.attn_dp, "attn_cp_size": layout.attn_cp, "attn_dcp_size": 1,
            "shared_experts_tp_size": None, "attn_tp_size": layout.attn_tp, "moe_tp_size": layout.moe_tp}


def keyword_widths(layout: SGLangLayout) -> dict[str, int]:
    """The widths 0.5.10.post1 / 0.5.11's ``initialize_model_parallel`` takes as keywords."""
    return {"tensor_model_parallel_size": layout.tp, "expert_model_parallel_size": layout.ep,
            "pipeline_model_parallel_size": layout.pp, "attention_data_parallel_size": layout.attn_dp,
            "attention_context_model_parallel_size": layout.attn_cp, "moe_data_model_parallel_size": layout.moe_dp}


def _accepted(function: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The keywords ``function`` takes (all of them when it takes ``**kwargs``, as ``override_permanently``)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(values)
    return {key: value for key, value in values.items() if key in parameters}


class KeywordWidthsAPI:
    """SGLang 0.5.10.post1 and 0.5.11: widths are keywords of ``initialize_model_parallel``."""

    name = "kwargs"

    def __init__(self, ps: Any) -> None:
        self.ps = ps

    def publish_widths(self, layout: SGLangLayout) -> None:
        pass

    def initialize(self, layout: SGLangLayout, backend: str) -> None:
        self.ps.initialize_model_parallel(**_accepted(self.ps.initialize_model_parallel, keyword_widths(layout)),
                                          backend=backend)


class RuntimeContextAPI(KeywordWidthsAPI):
    """SGLang 0.5.23: widths are published on ``runtime_context.get_parallel()`` before the groups are built."""

    name = "runtime_context"

    def publish_widths(self, layout: SGLangLayout) -> None:
        from sglang.srt.runtime_context import get_parallel

        # As SGLang's launcher publishes them; a scoped override() would be gone when later code
        # (destroy_model_parallel) reads the widths.
        override = get_parallel().override_permanently
        override(**_accepted(override, sglang_widths(layout)))

    def initialize(self, layout: SGLangLayout, backend: str) -> None:
        self.ps.initialize_model_parallel(backend=backend)


def detect_api(ps: Any) -> KeywordWidthsAPI:
    """The adapter for the imported ``parallel_state`` (same rule as the parent's source check)."""
    if "tensor_model_parallel_size" in inspect.signature(ps.initialize_model_parallel).parameters:
        return KeywordWidthsAPI(ps)
    try:
        from sglang.srt.runtime_context import get_parallel
    except ImportError:
        get_parallel = None
    if get_parallel is not None and hasattr(get_parallel(), "override_permanently"):
        return RuntimeContextAPI(ps)
    raise RuntimeError("unknown SGLang parallel-state API: initialize_model_parallel takes no "
                       "tensor_model_parallel_size and there is no runtime_context.get_parallel().override_permanently")


def coordinator_decisions(coordinator: Any) -> dict[str, str]:
    """What SGLang decided and built for one group (recorded in run.json's rank info)."""
    ca_comm, pynccl_comm = getattr(coordinator, "ca_comm", None), getattr(coordinator, "pynccl_comm", None)
    pynccl = "not built" if pynccl_comm is None else "built" + (" (disabled)" if getattr(pynccl_comm, "disabled", False) else "")
    return {
        "use_pynccl": str(bool(getattr(coordinator, "use_pynccl", False))),
        "use_custom_allreduce": str(bool(getattr(coordinator, "use_custom_allreduce", False))),
        "pynccl": pynccl,
        "custom_allreduce": type(ca_comm).__name__ if ca_comm is not None else "not built",
    }


def passed_flags(kwargs: dict[str, Any]) -> dict[str, str]:
    """The communicator flags ``initialize_model_parallel`` passed for a group ("None": SGLang's default, which on
    CUDA builds them: ``_ENABLE_CUSTOM_ALL_REDUCE`` and pynccl on, PS:2160-2201). The coordinator's own
    attributes say what this platform allows; on CPU that is False for every group, so an estimate reads these."""
    return {f"passed_{key}": str(kwargs.get(key)) for key in ("use_pynccl", "use_custom_allreduce")}


class GroupHooks(GroupSteps):
    """Wrappers around SGLang's group and communicator constructors that sample each step of each group."""

    skipped_note = "not built by SGLang (flag off or width 1)"

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self.engine = recorder
        self.built: list[GroupPlan] = []

    def group_wrapper(self, original: Any) -> Any:
        @functools.wraps(original)
        def init_model_parallel_group(group_ranks: list[list[int]], *args: Any, **kwargs: Any) -> Any:
            engine, name = self.engine, kwargs.get("group_name") or "anonymous"
            kwargs.update(forced_flags(engine.stack, name))
            self.group, self.done = name, set()
            engine.record("before", name)
            engine.current = (name, "groups_created")
            coordinator = original(group_ranks, *args, **kwargs)
            self.emit_until("end")
            engine.device_groups[name], engine.cpu_groups[name] = coordinator.device_group, coordinator.cpu_group
            engine.info.communicators[name] = {**coordinator_decisions(coordinator), **passed_flags(kwargs)}
            self.built.append(GroupPlan(name, tuple(tuple(r) for r in group_ranks)))
            self.group = None
            return coordinator

        return init_model_parallel_group

    def pynccl_wrapper(self, original: Any) -> Any:
        def pynccl_factory(*args: Any, **kwargs: Any) -> Any:
            self.emit_until("pynccl")
            self.engine.current = (self.group, "pynccl")
            communicator = original(*args, **kwargs)
            self.done.add("pynccl")
            self.engine.record("pynccl", self.group)
            return communicator

        return pynccl_factory

    def _custom_allreduce_done(self, status: str, note: str) -> None:
        self.done.add("custom_allreduce")
        self.engine.record("custom_allreduce", self.group, status=status, note=note[:300])

    def dispatch_wrapper(self, original: Any) -> Any:
        def dispatch_custom_allreduce(*args: Any, **kwargs: Any) -> Any:  # () in 0.5.1x, (group, device) in 0.5.23
            self.emit_until("custom_allreduce")
            self.engine.current = (self.group, "custom_allreduce")
            try:
                implementation = original(*args, **kwargs)
            except Exception as error:
                self._custom_allreduce_done(StepStatus.FAILED, f"dispatch failed: {error}")
                raise
            return self._constructor(implementation)

        return dispatch_custom_allreduce

    def _constructor(self, implementation: Any) -> Any:
        def construct(*args: Any, **kwargs: Any) -> Any:
            try:
                communicator = implementation(*args, **kwargs)
            except Exception as error:  # SGLang logs it and goes on without custom all-reduce
                self._custom_allreduce_done(StepStatus.FAILED, str(error))
                raise
            disabled = " (disabled)" if getattr(communicator, "disabled", False) else ""
            self._custom_allreduce_done(StepStatus.OK, getattr(implementation, "__name__", str(implementation)) + disabled)
            return communicator

        return construct

    @contextlib.contextmanager
    def installed(self, ps: Any, pynccl_module: Any, car: Any) -> Iterator["GroupHooks"]:
        originals = (ps.init_model_parallel_group, pynccl_module.PyNcclCommunicator, car.dispatch_custom_allreduce)
        ps.init_model_parallel_group = self.group_wrapper(originals[0])
        pynccl_module.PyNcclCommunicator = self.pynccl_wrapper(originals[1])
        car.dispatch_custom_allreduce = self.dispatch_wrapper(originals[2])
        try:
            yield self
        finally:
            ps.init_model_parallel_group, pynccl_module.PyNcclCommunicator, car.dispatch_custom_allreduce = originals


class InstalledBuilder(GroupBuilder):
    """The installed SGLang builds its world and groups itself, with :class:`GroupHooks` around them."""

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self.parallel_state: Any = None
        on_cpu = recorder.device_kind == "cpu"
        if on_cpu:  # what a CPU runner with `pip install --no-deps sglang` lacks
            from memprobe.engines.sglang import standins

            standins.install()
        # Import SGLang before the first reading, so that its import cost (host memory only)
        # is not charged to a step.
        from sglang.srt.distributed import parallel_state  # noqa: F401
        from sglang.srt.distributed.device_communicators import custom_all_reduce, pynccl  # noqa: F401

        if on_cpu and (note := standins.import_note()):
            recorder.info.warnings.append(note)

    def _prepare_sglang(self, ps: Any) -> None:
        try:  # as SGLang's bootstrap does unless --enable-p2p-check
            from sglang.srt.utils.common import monkey_patch_p2p_access_check

            monkey_patch_p2p_access_check()
        except ImportError:
            pass
        # --device cpu: no GPU communicators (SGLang's pynccl would bind a CUDA device; its custom
        # all-reduce asserts ROCm on CPU). A missing NCCL library makes pynccl disable itself.
        if self.recorder.device_kind == "cpu":
            os.environ["SGLANG_NCCL_SO_PATH"] = "/nonexistent/libnccl.so.2"
        ps.set_custom_all_reduce(self.recorder.device_kind != "cpu")

    def _sglang_world(self, ps: Any, backend: str) -> None:
        recorder = self.recorder
        recorder.current = ("world", "world")
        ps.init_distributed_environment(
            world_size=recorder.world_size, rank=recorder.rank, local_rank=recorder.local_rank,
            distributed_init_method=INIT_METHOD, backend=backend, timeout=int(recorder.timeout.total_seconds()))
        world = ps.get_world_group()
        recorder.device_groups["world"], recorder.cpu_groups["world"] = world.device_group, world.cpu_group
        recorder.world_cpu_group = world.cpu_group
        recorder._record_nccl_library()
        recorder.record("world", "world")

    def world_and_groups(self) -> list[GroupPlan]:
        from sglang.srt.distributed import parallel_state as ps
        from sglang.srt.distributed.device_communicators import custom_all_reduce as car
        from sglang.srt.distributed.device_communicators import pynccl as pynccl_module

        api = detect_api(ps)
        self._prepare_sglang(ps)
        backend = self.recorder.backend
        with GroupHooks(self.recorder).installed(ps, pynccl_module, car) as hooks:
            api.publish_widths(self.recorder.layout)
            self._sglang_world(ps, backend)
            api.initialize(self.recorder.layout, backend)
        self.parallel_state = ps
        return hooks.built

    def destroy(self) -> None:
        ps = self.parallel_state
        try:
            if ps is not None and hasattr(ps, "destroy_model_parallel"):
                ps.destroy_model_parallel()
        except Exception:  # teardown problems must not hide the readings, which are already written
            pass

"""The worker side of an engine (imports torch; only inside workers): what builds the world, the groups and the
communicators while :class:`memprobe.measure.recorder.Recorder` samples every step.

:class:`GroupBuilder` is the template for an engine's reproduction: ``init_process_group`` (no ``device_id``:
lazy NCCL), then per planned group in the engine's order ``before``, ``groups_created`` (``new_group`` twice for
every rank list on every rank, keeping its own pair) and one step per communicator kind, each decided by the
engine's one rule (:meth:`Engine.decide`) and built by :meth:`GroupBuilder.build_communicator`. An engine whose
installed code builds its groups itself overrides :meth:`GroupBuilder.world_and_groups`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from memprobe.engines.api import Decision, Facts, GroupPlan, Verdict
from memprobe.measure.rendezvous import INIT_METHOD, nccl_host
from memprobe.model.records import StepStatus
from memprobe.model.steps import BEFORE, GROUPS_CREATED, WORLD


def gather_objects(cpu_group: Any, value: Any, size: int) -> list[Any]:
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, value, group=cpu_group)
    return gathered


class GroupBuilder:
    """Builds an engine's planned groups on this rank; subclasses build the engine's communicator kinds."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self.engine = recorder.engine.engine

    # ------------------------------------------------------------------ the template
    def world_and_groups(self) -> list[GroupPlan]:
        """Build the world and every group, recording each step; returns the built groups (world excluded)."""
        self.build_world()
        built = [group for group in self.recorder.plan.built_groups() if group.name != WORLD]
        for group in built:
            self.build_group(group)
        return built

    def build_world(self) -> None:
        recorder = self.recorder
        recorder.current = (WORLD, WORLD)
        # no device_id: lazy, as the engines; the scenario's own keys in torchrun's store
        dist.init_process_group(backend=recorder.backend, init_method=INIT_METHOD, rank=recorder.rank,
                                world_size=recorder.world_size, timeout=recorder.timeout)
        device_group, cpu_group = self.new_groups(recorder.plan.group(WORLD))
        recorder.device_groups[WORLD], recorder.cpu_groups[WORLD] = device_group, cpu_group
        recorder.world_cpu_group = cpu_group
        recorder._record_nccl_library()
        recorder.record(WORLD, WORLD)

    def build_group(self, group: GroupPlan) -> None:
        recorder = self.recorder
        recorder.record(BEFORE, group.name)
        recorder.current = (group.name, GROUPS_CREATED)
        recorder.device_groups[group.name], recorder.cpu_groups[group.name] = self.new_groups(group)
        recorder.record(GROUPS_CREATED, group.name)
        ranks = group.ranks_of(recorder.rank)
        facts = self.facts(group, ranks)
        for decision in self.engine.decide(group, recorder.stack, facts):
            self.communicator_step(group, ranks, decision, facts)

    def new_groups(self, group: GroupPlan) -> tuple[Any, Any]:
        """``new_group`` for every list, NCCL then gloo, on every rank; keep this rank's pair (SGLang PS:337-418)."""
        recorder = self.recorder
        mine: tuple[Any, Any] = (None, None)
        for ranks in group.rank_lists:
            device_group = dist.new_group(list(ranks), backend=recorder.backend, timeout=recorder.timeout)
            cpu_group = dist.new_group(list(ranks), backend="gloo", timeout=recorder.timeout)
            if recorder.rank in ranks:
                mine = (device_group, cpu_group)
        return mine

    def facts(self, group: GroupPlan, ranks: tuple[int, ...]) -> Facts:
        """What the engine's rule looks at, for this rank's list of ``group``. On a GPU, when the stack asks the
        group for anything, hosts and NVLink are gathered over the group's gloo group (every member calls it)."""
        recorder = self.recorder
        env = self.engine.own_env(os.environ)
        if recorder.device_kind == "cpu" or len(ranks) == 1 or not any(recorder.stack.flags_for(group.name).values()):
            return Facts(width=len(ranks), device=recorder.device_kind, env=env)
        from memprobe.measure import nvml
        from memprobe.measure.cuda_libs import nccl_library  # the NCCL torch's calls bind to, preloaded or not

        cpu_group = recorder.cpu_groups[group.name]
        hosts = gather_objects(cpu_group, nccl_host(), len(ranks))  # NCCL_HOSTID makes a process a node of its own
        uuids = gather_objects(cpu_group, recorder.info.gpu_uuid, len(ranks))
        handles = [nvml.handle_by_uuid(uuid) for uuid in uuids]
        full_nvlink = all(nvml.is_available(handle) for handle in handles) and all(
            nvml.nvlink_connected(handles[i], handles[j]) is True
            for i in range(len(ranks)) for j in range(i + 1, len(ranks)))
        properties = torch.cuda.get_device_properties(torch.cuda.current_device())
        return Facts(width=len(ranks), nodes=len(set(hosts)), full_nvlink=full_nvlink,
                     capability=properties.major * 10 + properties.minor, sm_count=properties.multi_processor_count,
                     device=recorder.device_kind, env=env, nccl=nccl_library().version())

    def communicator_step(self, group: GroupPlan, ranks: tuple[int, ...], decision: Decision, facts: Facts) -> None:
        recorder = self.recorder
        if decision.built:
            recorder.current = (group.name, decision.kind)
            try:
                decision = self.build_communicator(group, ranks, decision, facts)
            except CommunicatorFailed as failure:  # the engine catches it, logs it and goes on without
                decision = Decision(group.name, decision.kind, Verdict.FAILED, reason=str(failure))
        recorder.info.communicators.setdefault(group.name, {})[decision.kind] = decision.text()
        if decision.built:
            implementation = f"{decision.implementation}: " if decision.implementation else ""
            note = (f"{implementation}{decision.planned_bytes} bytes planned; {decision.reason}"
                    if decision.planned_bytes is not None else "")
            recorder.record(decision.kind, group.name, note=note)
        elif decision.verdict is Verdict.FAILED:
            recorder.record(decision.kind, group.name, status=StepStatus.FAILED, note=decision.text()[:300])
        else:
            recorder.record(decision.kind, group.name, status=StepStatus.SKIPPED, note=decision.text())

    # ------------------------------------------------------------------ what engines fill in
    def build_communicator(self, group: GroupPlan, ranks: tuple[int, ...], decision: Decision, facts: Facts) -> Decision:
        """Build one communicator the engine decided to build; the decision as built (with its planned bytes), or
        raise :class:`CommunicatorFailed` for a failure the engine survives."""
        raise NotImplementedError(f"engine {self.engine.name} builds no {decision.kind}")

    def destroy(self) -> None:
        """Free what the builder built (before the process groups are destroyed)."""


class CommunicatorFailed(Exception):
    """A communicator failed to build in a way its engine survives (SGLang logs a custom all-reduce failure)."""


class GroupSteps:
    """The steps of the group an installed engine is building, sampled once each in their order: hooks around the
    engine's constructors call :meth:`emit_until` before a step, so a step the engine's code skipped (a flag off, a
    width of one) is recorded as skipped with ``skipped_note``, never left out."""

    skipped_note = "not built by the engine"

    def __init__(self, recorder: Any) -> None:
        from memprobe.model.steps import group_init_steps

        self.recorder = recorder
        self.steps = group_init_steps(recorder.engine.engine.kind_names)
        self.group: str | None = None
        self.done: set[str] = set()

    def emit_until(self, step: str) -> None:
        """Sample every step of the current group before ``step`` that has not been sampled yet."""
        for name in self.steps:
            if name == step:
                return
            if name not in self.done:
                self.done.add(name)
                if name == GROUPS_CREATED:
                    self.recorder.record(name, self.group)
                else:
                    self.recorder.record(name, self.group, status=StepStatus.SKIPPED, note=self.skipped_note)

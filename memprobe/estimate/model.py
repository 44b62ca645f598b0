"""The estimate: per rank, the readings a measured run of a scenario would take, from NCCL's rules, the engine's
buffer sizes, torch's caching allocator and one GPU's calibration. It yields the records the worker yields
(:class:`~memprobe.model.records.Run`), marked ``source = "estimated"``, so every report renders it.

Each rank walks the step sequence of :mod:`memprobe.model.steps` as the worker does
(``memprobe/measure/recorder.py``): the CUDA context; per group ``groups_created`` (lazy NCCL and gloo
groups: nothing on the GPU), then each communicator kind of the engine as the engine's one rule decides it
(:meth:`Engine.decide`): an NCCL kind (an eager NCCL communicator warmed by a 1-element all-reduce on a stream of
its own) from NCCL's rules, any other kind from the engine's sizes (:meth:`Engine.sizes`); then ``first_use``
(torch's lazy communicator of the group, created by its first all-reduce, followed by ``empty_cache``). Every
reading's note says how its bytes were made up. Nothing here names an engine's groups or kinds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import NamedTuple

from memprobe.engines.api import Allocation, Decision, Engine, Facts, GroupPlan, Plan
from memprobe.engines.stacks import Stack
from memprobe.errors import UsageError
from memprobe.estimate import nccl
from memprobe.estimate.calibration import Calibration
from memprobe.estimate.nccl_versions import calibration_mismatch
from memprobe.estimate.torch_cache import CachingAllocator
from memprobe.model.records import SCHEMA_VERSION, PlannedGroup, RankInfo, Reading, Run, RunRecord, RunStatus, StepStatus
from memprobe.model.scenario import Scenario, env_presets
from memprobe.model.steps import BEFORE, CUDA_CONTEXT, END, FIRST_USE, GROUPS_CREATED, START, WORLD
from memprobe.units import MIB as MiB

SOURCE = "estimated"
SAMPLING_MODE = "estimate"
MAX_GPUS_PER_NODE = 8


@dataclass(frozen=True)
class Topology:
    """Where the ranks sit: ``nnodes`` nodes of ``gpus_per_node`` NVSwitch-joined GPUs, rank ``r`` on node
    ``r // gpus_per_node``; between nodes the ``network`` (see :class:`memprobe.estimate.nccl.Network`)."""

    gpus_per_node: int
    nnodes: int
    nics_per_node: int
    network: nccl.Network = nccl.Network()

    @classmethod
    def for_world(cls, world_size: int, gpus_per_node: int | None, nnodes: int | None,
                  network: nccl.Network = nccl.Network()) -> "Topology":
        if gpus_per_node is not None and gpus_per_node < 1:
            raise UsageError(f"--gpus-per-node must be 1 or more, got {gpus_per_node}")
        if nnodes is not None and nnodes < 1:
            raise UsageError(f"--nnodes must be 1 or more, got {nnodes}")
        if gpus_per_node is None:
            gpus_per_node = -(-world_size // nnodes) if nnodes else min(world_size, MAX_GPUS_PER_NODE)
            if gpus_per_node > MAX_GPUS_PER_NODE:  # nodes the user gave, too few for the world: say so, not --gpus-per-node
                raise UsageError(f"world size {world_size} on --nnodes {nnodes} needs {gpus_per_node} GPUs per node; the "
                                 f"rules model NVSwitch nodes of at most {MAX_GPUS_PER_NODE} GPUs: give --nnodes "
                                 f"{-(-world_size // MAX_GPUS_PER_NODE)} or more")
        if gpus_per_node > MAX_GPUS_PER_NODE:
            raise UsageError(f"--gpus-per-node {gpus_per_node}: the rules model NVSwitch nodes of at most "
                             f"{MAX_GPUS_PER_NODE} GPUs (HGX H100/H200)")
        if world_size > gpus_per_node and world_size % gpus_per_node:
            raise UsageError(f"world size {world_size} does not fill nodes of {gpus_per_node} GPUs; give --gpus-per-node "
                             f"a divisor of {world_size}")
        needed = -(-world_size // gpus_per_node)
        if nnodes is not None and nnodes != needed:
            raise UsageError(f"world size {world_size} on nodes of {gpus_per_node} GPUs fills {needed} node(s), not "
                             f"--nnodes {nnodes}")
        return cls(gpus_per_node=gpus_per_node, nnodes=needed, nics_per_node=network.nics_per_node(gpus_per_node),
                   network=network)

    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def describe(self) -> str:
        nodes = f"{self.nnodes} node{'s' if self.nnodes > 1 else ''} of {self.gpus_per_node} GPUs (NVSwitch)"
        if self.nnodes > 1:
            nics = f"{self.nics_per_node} NIC{'s' if self.nics_per_node > 1 else ''} per node"
            nodes += f", {nics}: {self.network.describe()}"
            if self.network.kind != "socket":
                nodes += " (beyond anything measured: the rules' assumptions)"
        return nodes


def effective_env(scenario: Scenario) -> dict[str, str]:
    """What a measured run of the scenario sets: the preset, then the scenario's own ``env`` (it wins)."""
    return {**env_presets()[scenario.env_preset], **scenario.env}


@dataclass
class _Rank:
    """One rank's state while its steps are walked."""

    rank: int
    calibration: Calibration
    cumem: bool
    allocator: CachingAllocator = field(default_factory=CachingAllocator)
    total: int = 0
    reserved: int = 0
    first_communicator_done: bool = False
    kernel_stack: int = 0  # the largest per-thread stack of the NCCL kernels this process has launched
    readings: list[Reading] = field(default_factory=list)
    decisions: dict[str, dict[str, str]] = field(default_factory=dict)

    def record(self, step: str, group: str, added: int, note: str, status: str = StepStatus.OK) -> None:
        self.total += added
        self.reserved = self.allocator.reserved
        self.readings.append(Reading(rank=self.rank, sequence=len(self.readings), step=step, group=group, status=status,
                                     primary_bytes=self.total, process_bytes=self.total, device_used_bytes=None,
                                     torch_reserved_bytes=self.reserved, other_gpus_bytes=None, elapsed_s=0.0, note=note))

    def torch_step(self, action) -> int:
        """Bytes torch's cache adds (or gives back) while ``action`` runs on the allocator."""
        before = self.allocator.reserved
        action(self.allocator)
        return self.allocator.reserved - before

    def communicator(self, estimate: nccl.CommunicatorEstimate) -> tuple[int, str]:
        """Bytes of one eager or lazy communicator, with the once-per-process cost of the first multi-rank one."""
        added, note = estimate.bytes, estimate.describe()
        if not self.first_communicator_done and estimate.n_ranks > 1:
            first = self.calibration.point(self.cumem).first_communicator_bytes
            added += first
            note += f"; + {first / MiB:g} MiB once per process (first multi-rank communicator, calibration)"
            self.first_communicator_done = True
            # the calibration's first communicator joins two one-GPU nodes: its warm-up launched that algorithm's kernel
            self.kernel_stack = nccl.WARMUP_KERNEL_STACK[nccl.warmup_algorithm(2, 2)]
        stack = nccl.WARMUP_KERNEL_STACK.get(estimate.warmup, 0)
        if stack > self.kernel_stack:
            sms = self.calibration.sm_count
            grown = nccl.local_memory(stack, sms) - nccl.local_memory(self.kernel_stack, sms)
            added += grown
            note += (f"; + {grown / MiB:g} MiB of local memory: the first {estimate.warmup.upper()}_LL kernel needs a "
                     f"{stack} B stack per thread ({self.kernel_stack} B so far)")
            self.kernel_stack = stack
        return added, note


@dataclass(frozen=True)
class Context:
    """What every rank of one scenario shares."""

    scenario: Scenario
    engine: Engine
    plan: Plan
    topology: Topology
    calibration: Calibration
    settings: nccl.NcclSettings
    links: nccl.GpuLinks
    stack: Stack
    engine_env: dict[str, str]  # the engine's own variables of the scenario's environment (Facts.env)
    nccl_why: str = ""  # where the rules' NCCL release came from (--nccl, the installed torch's, the engine's pin)


def estimate_run(scenario: Scenario, topology: Topology, calibration: Calibration, stack: Stack | None = None,
                 nccl_version: str | None = None, nccl_why: str = "") -> Run:
    """The estimated run of ``scenario``: one record, every rank's readings.

    ``stack`` defaults to the scenario's; an installed engine's estimate (``--engine sglang``) passes the stack
    its CPU run taught (what the installed engine's own start-up asked for). ``nccl_version``:
    whose rules apply (default: the calibration's NCCL, see :func:`memprobe.estimate.nccl_versions.resolve`).
    """
    context = estimate_context(scenario, topology, calibration, stack, nccl_version, nccl_why)
    lists, classes = _rank_classes(context.plan, topology, context.settings.eager)
    ranks = [estimate_rank(context, rank, lists) for rank in sorted(set(classes.values()))]
    record = _record(context, effective_env(scenario), ranks, classes)
    readings = [reading for rank in ranks for reading in rank.readings]
    return Run(record=record, readings=readings, classes=classes if len(ranks) < len(classes) else {})


def estimate_context(scenario: Scenario, topology: Topology, calibration: Calibration,
                     stack: Stack | None = None, nccl_version: str | None = None, nccl_why: str = "") -> Context:
    """What every rank of ``scenario`` shares (see :func:`estimate_run` for ``stack`` and ``nccl_version``)."""
    from memprobe.estimate.nccl_versions import resolve

    version = resolve(nccl_version, calibration.nccl)[0] if nccl_version else calibration.nccl
    settings = replace(nccl.NcclSettings.from_env(effective_env(scenario)), version=version)
    stack = stack or scenario.resolved_stack
    assert stack is not None
    engine = scenario.engine_ref.engine
    return Context(
        scenario=scenario, engine=engine, plan=engine.plan_for(scenario.layout, stack), topology=topology,
        calibration=calibration, settings=settings,
        links=nccl.GpuLinks(calibration.compute_capability, calibration.nvlinks_per_gpu), stack=stack,
        engine_env=engine.own_env(effective_env(scenario)), nccl_why=nccl_why,
    )


class Member(NamedTuple):
    """A rank's place in one group: its rank list, its index there, and how many of the list share a node."""

    ranks: tuple[int, ...]
    position: int  # not "index": a NamedTuple field of that name would hide tuple.index
    per_node: int


@lru_cache(maxsize=8)  # the scenarios of one comparison share layouts: full and lean estimate the same ranks
def _rank_classes(plan: Plan, topology: Topology, eager: bool
                  ) -> tuple[dict[str, dict[int, Member]], dict[int, int]]:
    """rank -> the first rank whose readings it shares, and every representative's :class:`Member` per group.

    A rank's readings depend, per group, on the width of its list, the list's ranks per node, and how many ring
    and tree peers the rank has on and off its node (:func:`memprobe.estimate.nccl.peer_counts`): the rules see
    nothing else of it, so ranks alike in all of them read the same bytes at every step.
    """
    groups = [group for group in plan.groups if not group.is_alias]
    layout = plan.layout
    kinds: dict[tuple, int] = {}  # what a rank's bytes depend on in one group -> a small number
    placed = [_place_group(group, layout.world_size, topology, eager, kinds) for group in groups]
    representatives: dict[tuple, int] = {}
    signatures = zip(*(column for column, _, _ in placed))
    classes = {rank: representatives.setdefault(signature, rank) for rank, signature in enumerate(signatures)}
    lists = {}
    for group, (_, owner, per_node) in zip(groups, placed):
        members = {}
        for rank in representatives.values():
            ranks = group.rank_lists[owner[rank]]
            members[rank] = Member(ranks, ranks.index(rank), per_node[owner[rank]])
        lists[group.name] = members
    return lists, classes


def _place_group(group: GroupPlan, world_size: int, topology: Topology, eager: bool,
                 kinds: dict[tuple, int]) -> tuple[list[int], list[int], list[int]]:
    """Per rank of the world: the kind of its place in ``group`` (a number from ``kinds``) and its list's index;
    per list: its ranks per node.

    Lists of one shape (width, stride, first rank's place on its node) have the same ranks per node and so the
    same pattern: it is worked out once per shape, and an evenly spaced list is written as one slice.
    """
    column, owner, per_node_of = [0] * world_size, [0] * world_size, []
    patterns: dict[tuple, tuple[int, list[int]]] = {}
    singleton = kinds.setdefault(_pattern(1, 1, eager)[0], len(kinds))
    for index, ranks in enumerate(group.rank_lists):
        if len(ranks) == 1:  # self_pp has one per rank: skip the shape work
            column[ranks[0]], owner[ranks[0]] = singleton, index
            per_node_of.append(1)
            continue
        stride = ranks[1] - ranks[0]
        even = stride > 0 and ranks == tuple(range(ranks[0], ranks[-1] + 1, stride))
        shape = (len(ranks), stride, ranks[0] % topology.gpus_per_node) if even else ranks
        known = patterns.get(shape)
        if known is None:
            per_node = _ranks_per_node(topology, ranks)
            known = patterns[shape] = (per_node, [kinds.setdefault(item, len(kinds))
                                                  for item in _pattern(len(ranks), per_node, eager)])
        per_node, pattern = known
        per_node_of.append(per_node)
        if even:
            column[ranks[0]:ranks[-1] + 1:stride] = pattern
            owner[ranks[0]:ranks[-1] + 1:stride] = [index] * len(ranks)
        else:
            for place, member in enumerate(ranks):
                column[member], owner[member] = pattern[place], index
    return column, owner, per_node_of


@lru_cache(maxsize=None)
def _pattern(width: int, per_node: int, eager: bool) -> tuple[tuple, ...]:
    """Per index in a list of ``width`` ranks, what its bytes depend on (see :func:`_rank_classes`)."""
    return tuple((width, per_node, counts) for counts in nccl.list_peer_counts(width, per_node, eager))


def estimate_rank(context: Context, rank: int, lists: dict[str, dict[int, Member]]) -> _Rank:
    """One rank's readings; ``lists[group][rank]`` is its place in each built group."""
    point = context.calibration.point(context.settings.cumem)
    state = _Rank(rank=rank, calibration=context.calibration, cumem=context.settings.cumem)
    state.record(START, "", 0, "before CUDA")
    state.torch_step(lambda cache: cache.free(cache.allocate(4)))  # the context step's first tensor
    state.record(CUDA_CONTEXT, "", point.cuda_context_bytes, "set_device + a first tensor (calibration)")
    state.record(WORLD, WORLD, 0, "init_process_group without device_id: lazy NCCL, gloo on the host")
    built = [group for group in context.plan.built_groups() if group.name != WORLD]
    for group in built:
        state.record(BEFORE, group.name, 0, "")
        state.record(GROUPS_CREATED, group.name, 0, "new_group NCCL (lazy) + gloo (host) per rank list")
        member = lists[group.name][rank]
        for decision in context.engine.decide(group, context.stack, _facts(context, member)):
            _communicator_step(context, state, group, decision, member)
    for group in [context.plan.group(WORLD), *built]:
        _first_use(context, state, group, lists[group.name][rank])
    state.record(END, "", 0, "")
    return state


def _group_estimate(context: Context, member: Member) -> nccl.CommunicatorEstimate:
    return nccl.communicator(member.position, len(member.ranks), member.per_node, context.links,
                             context.topology.nics_per_node, context.settings, context.topology.network)


def _ranks_per_node(topology: Topology, ranks: tuple[int, ...]) -> int:
    if ranks[0] // topology.gpus_per_node == ranks[-1] // topology.gpus_per_node:  # lists are in rank order
        return len(ranks)
    counts: dict[int, int] = {}
    for member in ranks:
        node = member // topology.gpus_per_node
        counts[node] = counts.get(node, 0) + 1
    return max(counts.values())


def _facts(context: Context, member: Member) -> Facts:
    """What the engine's rule sees of a rank's list: its nodes from the topology; an NVSwitch node is fully
    NVLink-connected; the GPU's generation and SM count from the calibration."""
    nodes = {context.topology.node_of(rank) for rank in member.ranks}
    return Facts(width=len(member.ranks), nodes=len(nodes), full_nvlink=True,
                 capability=context.calibration.compute_capability, sm_count=context.calibration.sm_count,
                 env=context.engine_env, nccl=context.settings.version)


def _communicator_step(context: Context, state: _Rank, group: GroupPlan, decision: Decision, member: Member) -> None:
    state.decisions.setdefault(group.name, {})[decision.kind] = decision.text()
    if not decision.built:
        state.record(decision.kind, group.name, 0, decision.text(), status=StepStatus.SKIPPED)
        return
    if context.engine.kind(decision.kind).nccl:
        added, note = state.communicator(_group_estimate(context, member))
        stream = f"{decision.kind}:{group.name}"  # the warm-up tensor is allocated on the communicator's new stream
        added += state.torch_step(lambda cache: cache.free(cache.allocate(4, stream)))
        state.record(decision.kind, group.name, added, note + "; warm-up tensor on a new stream (torch cache)")
        return
    allocations = context.engine.sizes(decision, _facts(context, member))
    added, note = _allocated(state, allocations)
    prefix = f"{decision.implementation}: " if decision.implementation else ""
    state.record(decision.kind, group.name, added, prefix + note)


def _allocated(state: _Rank, allocations: list[Allocation]) -> tuple[int, str]:
    """Bytes on the GPU of an engine's own communicator: cudaMalloc'd and cuMem-mapped buffers in whole 2 MiB
    granules, torch tensors through the caching allocator (kept), host memory not at all; and how."""
    granule = nccl.CUMEM_GRANULARITY
    rounded = {id(a): -(-a.nbytes // granule) * granule for a in allocations if a.pool in ("raw", "cumem")}

    def allocate(cache: CachingAllocator) -> None:
        for allocation in allocations:
            if allocation.pool == "torch_cache":
                cache.allocate(allocation.nbytes)

    torch_added = state.torch_step(allocate)
    where = {"raw": "cudaMalloc'd", "cumem": "cuMem-mapped", "torch_cache": "in torch's cache",
             "host": "host memory, not on the GPU"}
    parts = [f"{a.what} {a.nbytes} B" + (f" -> {rounded[id(a)] / MiB:g} MiB" if id(a) in rounded else "")
             + f" ({where[a.pool]})" for a in allocations]
    return sum(rounded.values()) + torch_added, "; ".join(parts) + f"; +{torch_added / MiB:g} MiB of torch segments"


def _first_use(context: Context, state: _Rank, group: GroupPlan, member: Member) -> None:
    ranks = member.ranks
    if context.scenario.warmup == "none":
        state.record(FIRST_USE, group.name, 0, "--warmup none", status=StepStatus.SKIPPED)
        return
    if len(ranks) == 1:
        state.record(FIRST_USE, group.name, 0, "width 1: no collective", status=StepStatus.SKIPPED)
        return
    added, note = state.communicator(_group_estimate(context, member))

    def collective(cache: CachingAllocator) -> None:
        cache.free(cache.allocate(4))
        cache.empty_cache()  # the engine empties the cache after the first collective

    torch_added = state.torch_step(collective)
    note += f"; torch's communicator, then empty_cache ({torch_added / MiB:+g} MiB of torch segments)"
    state.record(FIRST_USE, group.name, added + torch_added, note)


def _record(context: Context, env: dict[str, str], ranks: list[_Rank], classes: dict[int, int]) -> RunRecord:
    scenario, calibration, topology = context.scenario, context.calibration, context.topology
    stack = scenario.resolved_stack
    assert stack is not None
    environment = {
        "device": "cuda", "gpu_model": calibration.gpu_model, "gpu_count": topology.gpus_per_node,
        "nnodes": topology.nnodes, "driver": calibration.driver, "cuda": calibration.cuda, "torch": calibration.torch,
        "nccl": context.settings.version, "nccl_env": dict(sorted((k, v) for k, v in env.items())),
        "sampling_mode": SAMPLING_MODE, "memprobe": _version(),
        "estimate": {"rules": f"NCCL {context.settings.version} (memprobe/estimate/nccl.py)", "topology": topology.describe(),
                     **calibration.basis(), "rules_nccl": context.settings.version, "network": topology.network.kind,
                     "nic_gbps": topology.network.nic_gbps, "rules_nccl_why": context.nccl_why,
                     "warnings": calibration_mismatch(context.settings.version, calibration.nccl),
                     # what the NCCL release changes in the engine's own decisions: the gate's verdict repeats it
                     "engine_notes": context.engine.estimate_notes(context.stack, context.settings.version)},
    }
    infos = _rank_infos(context, ranks, classes)
    return RunRecord(
        run_id=scenario.name, layout=scenario.layout.as_dict(), world_size=scenario.layout.world_size,
        stack=stack.as_dict(), device="cuda", warmup=scenario.warmup, env_preset=scenario.env_preset,
        env=dict(scenario.env), plan=[_plan_entry(group, context) for group in context.plan.groups],
        status=RunStatus.COMPLETE, scenario=scenario.name, engine=scenario.engine, definition=scenario.definition(),
        memprobe_version=_version(), created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        environment=environment, ranks=infos, source=SOURCE, schema_version=SCHEMA_VERSION,
    )


def _rank_infos(context: Context, ranks: list[_Rank], classes: dict[int, int]) -> list[RankInfo]:
    """Every rank's :class:`RankInfo`: one per representative, copied for the ranks alike to it (a dict copy per rank:
    building 4096 dataclasses costs more than the estimate itself)."""
    calibration, per_node = context.calibration, context.topology.gpus_per_node
    templates = {state.rank: RankInfo(rank=state.rank, gpu_name=calibration.gpu_model, sampling_mode=SAMPLING_MODE,
                                      torch_version=calibration.torch, nccl_version=context.settings.version,
                                      communicators=state.decisions) for state in ranks}
    devices = [f"cuda:{local}" for local in range(per_node)]
    hosts = [f"node{node}" for node in range(context.topology.nnodes)]
    infos = []
    for rank, representative in sorted(classes.items()):
        local = rank % per_node
        info = object.__new__(RankInfo)
        info.__dict__ = {**templates[representative].__dict__, "rank": rank, "local_rank": local,
                         "host": hosts[context.topology.node_of(rank)], "device": devices[local], "warnings": []}
        infos.append(info)
    return infos


def _plan_entry(group: GroupPlan, context: Context) -> PlannedGroup:
    return PlannedGroup(name=group.name, ranks=[list(ranks) for ranks in group.rank_lists], alias_of=group.alias_of,
                        communicators=context.stack.communicators_for(group))


def _version() -> str:
    from memprobe import __version__

    return __version__

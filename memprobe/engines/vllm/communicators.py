"""Which communicators vLLM's ``CudaCommunicator`` builds for each group, per release line.

Pure decisions: no torch, no CUDA. Every rule cites the file and line of the vLLM wheel it models:
``0.33`` is vLLM 0.33.0 (the newest, the default), ``0.11-0.2x`` is vLLM 0.11.0 (EP gets PyNccl since
vllm PR #24982; the rules below held through the 0.2x releases read for the research notes) and ``0.10``
is vLLM 0.10.2 (``use_pynccl = "ep" not in unique_name``). File names are relative to
``vllm/distributed/`` unless they say otherwise; ``cc`` is ``device_communicators/cuda_communicator.py``,
``car`` is ``device_communicators/custom_all_reduce.py``.

These rules are taken on CUDA only. On a machine without a GPU the installed vLLM builds its platform's
communicator instead (``DeviceCommunicatorBase`` for the CUDA wheel: ``platforms/interface.py:1222-1224``),
so what is checked against the installed vLLM on CPU is the part decided in ``parallel_state.py``
(which groups get a device communicator, an MQ broadcaster and ``use_all2all``) and, with the platform answering
as CUDA's, ``CudaCommunicator``'s gates that read no hardware (``tools/vllm_layouts.py --cuda-communicator``, every
release line); what needs a GPU, libnccl or ``vllm._C`` was read from the source.

A stack says which communicators a reproduction builds: ``vllm`` is the release as it is; ``shared-ep``
(proposed, not vLLM's) lets EP and EPLB reuse TP's PyNccl communicator when their rank lists are TP's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from memprobe.engines.vllm.layout import (
    RELEASE_LINES, RELEASE_OF_LINE, VLLMGroup, VLLMLayout, VLLMPlan, all2all_backend, plan,
)

DEFAULT_RELEASE_LINE = "0.33"
STACKS: tuple[str, ...] = ("vllm", "shared-ep")

# Kinds of decision, one per object CudaCommunicator (or GroupCoordinator) may build for a group.
PYNCCL = "pynccl"
CUSTOM_ALLREDUCE = "custom_allreduce"
CUSTOM_ALLREDUCE_MNNVL = "custom_allreduce_mnnvl_buffer"
SYMM_MEM = "symm_mem"
FLASHINFER_ALLREDUCE = "flashinfer_allreduce"
ALL2ALL_MANAGER = "all2all_manager"
MQ_BROADCASTER = "mq_broadcaster"
KINDS: tuple[str, ...] = (PYNCCL, SYMM_MEM, FLASHINFER_ALLREDUCE, CUSTOM_ALLREDUCE, CUSTOM_ALLREDUCE_MNNVL,
                          ALL2ALL_MANAGER, MQ_BROADCASTER)

#: vLLM's NCCL environment preset: none. ``env_override.py`` set NCCL_CUMEM_ENABLE=0 up to 0.10.1.1; vllm PR
#: #24141 removed it, and 0.10.2's and 0.11.0's ``env_override.py:16-23`` set only
#: PYTORCH_NVML_BASED_CUDA_CHECK and TORCHINDUCTOR_COMPILE_THREADS. NCCL therefore runs with its defaults:
#: cuMem on and lazy connection setup (NCCL_RUNTIME_CONNECT), so buffers move from init to first use.
ENV_PRESET: dict[str, str] = {}
ENV_PRESET_NOTE = ("vLLM >= 0.10.2 sets no NCCL_* variable (vllm PR #24141; env_override.py:16-23 of 0.10.2 and "
                   "0.11.0): NCCL defaults, cuMem on, lazy connection setup")


@dataclass(frozen=True)
class GPUFacts:
    """What CudaCommunicator's eligibility checks read from the machine (defaults: one 8 x H200 HGX node)."""

    capability: str = "9.0"  # current_platform.get_device_capability().as_version_str()
    same_node: bool = True  # in_the_same_node_as(group) for every rank
    fully_connected: bool = True  # NVLink between every pair (current_platform.is_fully_connected)
    p2p: bool = True  # torch.cuda.can_device_access_peer (VLLM_SKIP_P2P_CHECK=1, the default, trusts the driver)
    multicast: bool = True  # torch symmetric memory's rendezvous returns a multicast pointer (NVSwitch)
    flashinfer: bool = True  # flashinfer importable (a vLLM 0.33 dependency)
    vllm_c: bool = True  # vllm._C importable: custom all-reduce's kernels (car:24-28 of 0.33.0)
    nccl: str = ""  # the NCCL release PyNccl loads (the one torch loaded); "": not known, the release's own assumed


@dataclass(frozen=True)
class Decision:
    """One object a group's start-up builds or skips, and why."""

    group: str
    kind: str
    built: bool
    reason: str
    source: str  # vLLM file:line (of the release line's wheel)
    eager: bool = True  # allocates at init (False: the object exists, its buffers come at first use)
    shares_with: str | None = None  # built by another group (shared-ep's EP reuses TP's PyNccl)


@dataclass(frozen=True)
class GroupDecisions:
    group: VLLMGroup
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    def decision(self, kind: str) -> Decision | None:
        for decision in self.decisions:
            if decision.kind == kind:
                return decision
        return None

    def built(self, kind: str) -> bool:
        decision = self.decision(kind)
        return decision is not None and decision.built


@dataclass(frozen=True)
class Decisions:
    layout: VLLMLayout
    release_line: str
    stack: str
    gpu: GPUFacts
    groups: tuple[GroupDecisions, ...]

    def for_group(self, name: str) -> GroupDecisions:
        for entry in self.groups:
            if entry.group.name == name:
                return entry
        raise KeyError(name)


def _env_flag(env: Mapping[str, str], name: str, default: str) -> bool:
    """vLLM's envs.py reads these as ``bool(int(os.getenv(NAME, default)))``."""
    return bool(int(env.get(name, default)))


def _check_release_line(release_line: str) -> str:
    if release_line not in RELEASE_LINES:
        raise ValueError(f"unknown vLLM release line {release_line!r}; one of {', '.join(RELEASE_LINES)}")
    return release_line


def _is_tp(group: VLLMGroup, release_line: str) -> bool:
    """The TP-only gate on the accelerated all-reduces. 0.33: the name before ':' is exactly "tp"
    (cc:57); 0.10/0.11: ``"tp" not in unique_name`` (cc:26 of 0.10.2, cc:32 of 0.11.0), which no other
    group name of those releases contains."""
    return group.unique_name.split(":")[0] == "tp" if release_line == "0.33" else "tp" in group.unique_name


@dataclass(frozen=True)
class CudaGates:
    """What CudaCommunicator decides from the group's name, vLLM's flags and the environment alone, before any
    hardware check (cc:57-83 and base_device_communicator.py:244-245 of 0.33.0). These are the decisions the
    installed vLLM takes on CPU too (tests/fixtures/vllm-*-cuda-communicator.json, one per release line)."""

    use_custom_allreduce: bool
    use_torch_symm_mem: bool
    use_flashinfer_allreduce: bool
    use_all2all: bool


def cuda_gates(group: VLLMGroup, layout: VLLMLayout, release_line: str = DEFAULT_RELEASE_LINE,
               env: Mapping[str, str] | None = None) -> CudaGates:
    line = _check_release_line(release_line)
    env = env or {}
    tp = _is_tp(group, line)
    symm_default = "0" if line == "0.10" else "1"
    symm = _env_flag(env, "VLLM_ALLREDUCE_USE_SYMM_MEM", symm_default) and (tp or line == "0.10")
    flashinfer = (line == "0.33" and tp and _env_flag(env, "VLLM_ALLREDUCE_USE_FLASHINFER", "1")
                  and not _env_flag(env, "VLLM_BATCH_INVARIANT", "0"))
    all2all = group.name == "ep" and (group.use_all2all if line == "0.33" else layout.dp > 1)
    return CudaGates(use_custom_allreduce=tp and not layout.disable_custom_all_reduce, use_torch_symm_mem=symm,
                     use_flashinfer_allreduce=flashinfer, use_all2all=all2all)


#: The oldest NCCL vLLM 0.33.0's PyNccl loads: its wrapper binds ``ncclCommSuspend`` (pynccl_wrapper.py:337-338),
#: which NCCL exports from 2.29.7 (NVIDIA/nccl ``src/nccl.h.in:310`` at v2.29.7-1; absent at v2.28.9-1).
PYNCCL_MIN_NCCL_0_33 = (2, 29, 7)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])


def nccl_loads_pynccl_0_33(nccl: str) -> bool:
    """Whether vLLM 0.33.0's PyNccl loads NCCL release ``nccl`` ("": not known, taken as the one it requires)."""
    return not nccl or _release(nccl) >= PYNCCL_MIN_NCCL_0_33


def _pynccl(group: VLLMGroup, line: str, env: Mapping[str, str], gpu: GPUFacts) -> Decision:
    if line == "0.10" and "ep" in group.unique_name:
        return Decision(group.name, PYNCCL, False, "vLLM 0.10: 'ep does not use pynccl'", "cc:34-35 (0.10.2)")
    if line == "0.33" and env.get("VLLM_DISABLE_PYNCCL", "False").lower() in ("true", "1"):
        return Decision(group.name, PYNCCL, False, "VLLM_DISABLE_PYNCCL is set", "envs.py:1241-1243, "
                        "device_communicators/pynccl.py:127-129 (0.33.0)")
    if line == "0.33" and not nccl_loads_pynccl_0_33(gpu.nccl):
        # the missing symbol raises on CUDA (pynccl_wrapper.py:432-439) and PyNcclCommunicator disables itself
        # without a word (pynccl.py:131-137): vLLM runs on, its groups' bytes come through torch's NCCL groups
        return Decision(group.name, PYNCCL, False, f"NCCL {gpu.nccl} lacks ncclCommSuspend (NCCL >= 2.29.7), which "
                        "vLLM 0.33.0's PyNccl binds: vLLM disables PyNccl", "pynccl_wrapper.py:337-338,432-439; "
                        "pynccl.py:131-137 (0.33.0); nccl.h.in:310 (NCCL v2.29.7-1)")
    source = {"0.33": "cc:107-111, pynccl.py:144-191 (0.33.0)", "0.11-0.2x": "cc:55-59 (0.11.0)",
              "0.10": "cc:51-55 (0.10.2)"}[line]
    return Decision(group.name, PYNCCL, True, "every group wider than one: ncclCommInitRank, then a one-element "
                    "all_reduce warm-up", source)


def _symm_mem(group: VLLMGroup, line: str, gpu: GPUFacts, env: Mapping[str, str]) -> Decision:
    from memprobe.engines.vllm.sizes import symm_mem_max_size

    tp_only = line != "0.10"  # 0.10.2 builds it on any group when enabled (cc:60-64), but it is off by default
    default = "0" if line == "0.10" else "1"  # envs.py: 0.10.2 default 0 (:1220-1221); 1 since vllm PR #24111
    source = {"0.33": "cc:68,127-131; symm_mem.py:66-106 (0.33.0)", "0.11-0.2x": "cc:38,66-71; symm_mem.py:57-89 "
              "(0.11.0)", "0.10": "cc:60-64; symm_mem.py:57-89; envs.py:1220-1221 (0.10.2)"}[line]
    if tp_only and not _is_tp(group, line):
        return Decision(group.name, SYMM_MEM, False, "torch symmetric memory is for the TP group only", source)
    if not _env_flag(env, "VLLM_ALLREDUCE_USE_SYMM_MEM", default):
        return Decision(group.name, SYMM_MEM, False, f"VLLM_ALLREDUCE_USE_SYMM_MEM is off (default {default})", source)
    if symm_mem_max_size(line, gpu.capability, group.width) is None:
        return Decision(group.name, SYMM_MEM, False, f"no SYMM_MEM_ALL_REDUCE_MAX_SIZES entry for sm {gpu.capability} "
                        f"x {group.width} ranks", source)
    if not gpu.multicast:
        return Decision(group.name, SYMM_MEM, True, "buffer allocated and kept, communicator disabled: no multicast",
                        source)
    return Decision(group.name, SYMM_MEM, True, "TP: symmetric-memory buffer of the table's size, multicast on", source)


def _custom_allreduce(group: VLLMGroup, layout: VLLMLayout, line: str, gpu: GPUFacts) -> Decision:
    from memprobe.engines.vllm.sizes import custom_allreduce_world_sizes

    if line == "0.33":
        source = "cc:57-67,155-166; car:118,186-284 (0.33.0); v1/worker/gpu_worker.py:1706"
    else:
        release = RELEASE_OF_LINE[line]
        source = f"cc:{'26-32' if line == '0.10' else '32-37'}; car:51,72-157 ({release}); v1/worker/gpu_worker.py"
    kind = CUSTOM_ALLREDUCE
    if not _is_tp(group, line):
        return Decision(group.name, kind, False, "custom all-reduce is for the TP group only", source)
    if layout.disable_custom_all_reduce:
        return Decision(group.name, kind, False, "--disable-custom-all-reduce", source)
    if not gpu.vllm_c:
        return Decision(group.name, kind, False, "vllm._C missing: no custom all-reduce library", source)
    if group.width not in custom_allreduce_world_sizes(line):
        return Decision(group.name, kind, False, f"world size {group.width} not in {custom_allreduce_world_sizes(line)}",
                        source)
    if not gpu.same_node:
        if line != "0.33":
            return Decision(group.name, kind, False, "group spans nodes", source)
        if not (gpu.capability.startswith("10.") and gpu.multicast):
            return Decision(group.name, kind, False, "multi-node group without MNNVL (SM100 + multicast)", source)
    if gpu.same_node and group.width > 2 and not gpu.fully_connected:
        return Decision(group.name, kind, False, "more than two GPUs without full NVLink", source)
    if gpu.same_node and not gpu.p2p:
        return Decision(group.name, kind, False, "no GPU P2P access", source)
    return Decision(group.name, kind, True, "TP, supported world size, NVLink and P2P: IPC buffers", source)


def _mnnvl_buffer(group: VLLMGroup, custom: Decision, line: str, gpu: GPUFacts) -> Decision | None:
    """0.33 only (vllm PR #50000): CustomAllreduce allocates a torch symmetric-memory stage buffer at init
    and keeps it only when the rendezvous yields a multicast pointer (car:338-342, 357-367)."""
    if line != "0.33" or not _is_tp(group, line):
        return None
    source = "car:338-342,357-367 (0.33.0)"
    if not custom.built:
        return Decision(group.name, CUSTOM_ALLREDUCE_MNNVL, False, "no custom all-reduce", source)
    if not gpu.multicast:
        return Decision(group.name, CUSTOM_ALLREDUCE_MNNVL, False, "allocated, then released: no multicast", source)
    return Decision(group.name, CUSTOM_ALLREDUCE_MNNVL, True, "multicast available: the stage buffer is kept", source)


def _flashinfer(group: VLLMGroup, line: str, gpu: GPUFacts, env: Mapping[str, str]) -> Decision | None:
    """0.33 only among the lines modelled: FlashInferAllReduce on TP, default on (envs.py:1961-1963); its
    workspace is made on first use (``_ensure_workspace``), so nothing is allocated at init."""
    if line != "0.33" or not _is_tp(group, line):
        return None
    from memprobe.engines.vllm.sizes import FI_ALLREDUCE_FUSION_MAX_SIZE_MB

    source = "cc:69-72,133-137; device_communicators/flashinfer_all_reduce.py:394-450 (0.33.0)"
    if not _env_flag(env, "VLLM_ALLREDUCE_USE_FLASHINFER", "1") or _env_flag(env, "VLLM_BATCH_INVARIANT", "0"):
        return Decision(group.name, FLASHINFER_ALLREDUCE, False, "VLLM_ALLREDUCE_USE_FLASHINFER off or batch invariant",
                        source)
    if not gpu.flashinfer:
        return Decision(group.name, FLASHINFER_ALLREDUCE, False, "flashinfer not importable", source)
    table = FI_ALLREDUCE_FUSION_MAX_SIZE_MB.get(gpu.capability, {})
    if group.width not in table:
        return Decision(group.name, FLASHINFER_ALLREDUCE, False, f"no FlashInfer all-reduce size for {group.width} "
                        f"ranks on sm {gpu.capability}", source)
    return Decision(group.name, FLASHINFER_ALLREDUCE, True, "object built; workspace allocated at first use", source,
                    eager=False)


def _all2all(group: VLLMGroup, layout: VLLMLayout, line: str) -> Decision | None:
    if group.name != "ep":
        return None
    if line == "0.33":
        source = "base_device_communicator.py:244-245; cc:202-279; config/parallel.py:787-793 (0.33.0)"
        wanted = group.use_all2all
        why = "ParallelConfig.use_all2all (DP > 1, sequence-parallel MoE, or EP with PCP > 1)"
    else:
        release = RELEASE_OF_LINE[line]
        source = f"base_device_communicator.py:{'99-109' if line == '0.10' else '112-122'}; cc ({release})"
        wanted = layout.dp > 1
        why = "EP group with DP > 1"
    if not wanted:
        return Decision(group.name, ALL2ALL_MANAGER, False, f"no all2all: not {why}", source)
    return Decision(group.name, ALL2ALL_MANAGER, True, f"{all2all_backend(layout, line)} manager object; its "
                    "buffers (DeepEP, FlashInfer, ...) are made lazily by get_handle after model load", source,
                    eager=False)


def _mq(group: VLLMGroup) -> Decision | None:
    if not group.use_message_queue_broadcaster:
        return None
    source = "parallel_state.py:563-567; device_communicators/shm_broadcast.py:1080-1160 (0.33.0)"
    if group.width == 1:
        return Decision(group.name, MQ_BROADCASTER, False, "width 1", source)
    return Decision(group.name, MQ_BROADCASTER, True, "host shared memory ring, created by the group's first rank",
                    source)


def _shared_ep(decision: Decision, group: VLLMGroup, tp: VLLMGroup) -> Decision:
    """shared-ep: EP and EPLB reuse TP's PyNccl when their rank lists are TP's (as sets)."""
    if group.name not in ("ep", "eplb") or not decision.built:
        return decision
    if {frozenset(ranks) for ranks in group.rank_lists} == {frozenset(ranks) for ranks in tp.rank_lists}:
        return Decision(group.name, PYNCCL, False, "shared-ep: same ranks as TP, reuses TP's PyNccl",
                        "proposed (not vLLM)", shares_with="tp")
    return Decision(group.name, PYNCCL, True, "shared-ep: ranks differ from TP's, builds its own PyNccl",
                    decision.source)


def decide(layout: VLLMLayout, release_line: str = DEFAULT_RELEASE_LINE, stack: str = "vllm",
           gpu: GPUFacts = GPUFacts(), env: Mapping[str, str] | None = None) -> Decisions:
    """Every group's communicator decisions for ``layout`` under one release line and stack."""
    line = _check_release_line(release_line)
    if stack not in STACKS:
        raise ValueError(f"unknown vLLM stack {stack!r}; one of {', '.join(STACKS)}")
    env = dict(env or {})
    the_plan: VLLMPlan = plan(layout, line)
    tp = the_plan.group("tp")
    entries = []
    for group in the_plan.groups:
        if group.is_alias:
            entries.append(GroupDecisions(group))
            continue
        decisions: list[Decision] = []
        if group.builds_device_communicator:  # CudaCommunicator only for width > 1 (parallel_state.py:550-561)
            pynccl = _pynccl(group, line, env, gpu)
            if stack == "shared-ep":
                pynccl = _shared_ep(pynccl, group, tp)
            decisions.append(pynccl)
            if _is_tp(group, line) or line == "0.10":
                decisions.append(_symm_mem(group, line, gpu, env))
            flashinfer = _flashinfer(group, line, gpu, env)
            custom = _custom_allreduce(group, layout, line, gpu) if _is_tp(group, line) else None
            for decision in (flashinfer, custom, _mnnvl_buffer(group, custom, line, gpu) if custom else None,
                             _all2all(group, layout, line)):
                if decision is not None:
                    decisions.append(decision)
        mq = _mq(group)
        if mq is not None:
            decisions.append(mq)
        entries.append(GroupDecisions(group, tuple(decisions)))
    return Decisions(layout=layout, release_line=line, stack=stack, gpu=gpu, groups=tuple(entries))

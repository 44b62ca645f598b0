"""Which communicators an SGLang group builds: the one rule, pure, called by the worker (on the facts it gathered
from its group), the estimate (on the facts of its topology and calibration) and the reports.

SGLang 0.5.23 ``GroupCoordinator.__init__``: nothing for a group of one rank (``world_size > 1`` guards both);
``PyNcclCommunicator`` when ``use_pynccl``; a custom all-reduce when ``use_custom_allreduce`` and
``dispatch_custom_allreduce`` -> ``can_use_custom_all_reduce_v2`` / ``can_use_custom_all_reduce_with_nvlink``
allow it: one node, a supported world size, full NVLink (v2 always; v1 for more than two GPUs). P2P is assumed,
as SGLang does unless ``--enable-p2p-check``.
"""

from __future__ import annotations

from memprobe.engines.api import Decision, Facts, GroupPlan, Kind, Verdict
from memprobe.engines.sglang.sizes import V1_WORLD_SIZES, v2_supported_world_sizes
from memprobe.engines.stacks import Stack

PYNCCL = Kind("pynccl", "pynccl", nccl=True)
CUSTOM_ALLREDUCE = Kind("custom_allreduce", "custom all-reduce")
KINDS: tuple[Kind, ...] = (PYNCCL, CUSTOM_ALLREDUCE)


def custom_allreduce_choice(facts: Facts, implementation: str) -> tuple[str | None, str]:
    """The implementation SGLang builds for a group of ``facts.width`` ranks asked for ``implementation``, or
    ``(None, reason)``."""
    size = facts.width
    if facts.nodes > 1:
        return None, "group spans several nodes"
    v2_sizes = v2_supported_world_sizes(facts.capability // 10, facts.capability % 10, facts.sm_count)
    reasons = []
    if implementation == "v2":
        if size not in v2_sizes:
            reasons.append(f"v2: world size {size} not in {list(v2_sizes)}")
        elif not facts.full_nvlink:
            reasons.append("v2: GPUs not all NVLink-connected")
        else:
            return "v2", "full NVLink, one node"
    if size not in V1_WORLD_SIZES:
        reasons.append(f"v1: world size {size} not in {list(V1_WORLD_SIZES)}")
    elif size > 2 and not facts.full_nvlink:
        reasons.append("v1: more than two GPUs without full NVLink")
    else:
        return "v1", "; ".join(reasons + ["v1 layout"])
    return None, "; ".join(reasons)


def decide(engine, group: GroupPlan, stack: Stack, facts: Facts) -> list[Decision]:
    """Per kind (pynccl, custom all-reduce), what ``group`` builds."""
    flags = stack.flags_for(group.name)
    decisions = []
    for kind in KINDS:
        decision = engine.guard(group, kind.name, flags[kind.name], facts)
        if decision is None and kind is PYNCCL:
            decision = Decision(group.name, kind.name, Verdict.BUILT)
        if decision is None:
            implementation, reason = custom_allreduce_choice(facts, stack.option("custom_allreduce_impl"))
            decision = (Decision(group.name, kind.name, Verdict.BUILT, reason=reason, implementation=implementation)
                        if implementation else Decision(group.name, kind.name, Verdict.NOT_ELIGIBLE, reason=reason))
        decisions.append(decision)
    return decisions

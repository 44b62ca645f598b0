"""SGLang's built-in stacks: which communicators each group gets, full (before PR #22515) and lean (SGLang 0.5.23).

A stack names, per group, whether SGLang would build a ``pynccl`` communicator and a custom all-reduce for it.
Defaults follow ``init_model_parallel_group`` calls in SGLang 0.5.23 (research notes section 2.2). The only
difference between ``full`` and ``lean`` is sglang PR #22515: ``moe_ep`` and ``moe_tp`` pass
``use_pynccl=False, use_custom_allreduce=False``.
"""

from __future__ import annotations

from dataclasses import replace

from memprobe.engines.sglang.communicators import KINDS
from memprobe.engines.sglang.layout import GROUP_ORDER
from memprobe.engines.stacks import Flags, Stack
from memprobe.errors import UsageError

ENGINE_NAME = "sglang"
_KIND_NAMES = tuple(kind.name for kind in KINDS)
CUSTOM_ALLREDUCE_IMPL = "custom_allreduce_impl"  # the stack setting: which custom all-reduce layout to allocate
CUSTOM_ALLREDUCE_IMPLEMENTATIONS: tuple[str, ...] = ("v2", "v1")


def _flags(pynccl: bool, custom_allreduce: bool) -> Flags:
    return {"pynccl": pynccl, "custom_allreduce": custom_allreduce}


# SGLang 0.5.23 defaults with the global switches at their defaults
# (custom all-reduce on, SYNC_TOKEN_IDS_ACROSS_TP off, symm-mem off).
_LEAN_FLAGS: dict[str, Flags] = {
    "world": _flags(pynccl=False, custom_allreduce=False),  # PS:2147-2155
    "tp": _flags(pynccl=True, custom_allreduce=True),
    "attn_cp": _flags(pynccl=True, custom_allreduce=True),
    "attention_tp": _flags(pynccl=False, custom_allreduce=True),  # pynccl only with SYNC_TOKEN_IDS_ACROSS_TP
    "moe_dp": _flags(pynccl=True, custom_allreduce=True),
    "moe_ep": _flags(pynccl=False, custom_allreduce=False),  # sglang PR #22515
    "moe_tp": _flags(pynccl=False, custom_allreduce=False),  # sglang PR #22515
    "pp": _flags(pynccl=True, custom_allreduce=False),
    "self_pp": _flags(pynccl=True, custom_allreduce=False),  # moot: width 1
}
_V2 = {CUSTOM_ALLREDUCE_IMPL: "v2"}

LEAN = Stack(
    name="lean", engine=ENGINE_NAME, kinds=_KIND_NAMES, group_order=tuple(GROUP_ORDER), flags=dict(_LEAN_FLAGS), options=dict(_V2),
    description="SGLang 0.5.23 (after PR #22515): moe_ep and moe_tp get torch's NCCL and gloo groups only",
)
FULL = Stack(
    name="full", engine=ENGINE_NAME, kinds=_KIND_NAMES, group_order=tuple(GROUP_ORDER),
    flags={**_LEAN_FLAGS, "moe_ep": _flags(pynccl=True, custom_allreduce=True),
           "moe_tp": _flags(pynccl=True, custom_allreduce=True)},
    options=dict(_V2),
    description="SGLang before PR #22515: moe_ep and moe_tp also get pynccl and custom all-reduce",
)
INSTALLED = Stack(
    name="installed", engine=ENGINE_NAME, kinds=_KIND_NAMES, group_order=tuple(GROUP_ORDER), options=dict(_V2),
    description="--engine sglang only: SGLang's own flags, as the installed release passes them; memprobe forces none",
)
BUILTIN_STACKS: dict[str, Stack] = {"full": FULL, "lean": LEAN, "installed": INSTALLED}
BUILTIN_NAMES = ("full", "lean", "full:v1", "lean:v1", "full:v2", "lean:v2", "installed")
BUILTIN_NAMES_TEXT = "full, lean, full:v1, lean:v1, full:v2, lean:v2, installed; v2 is the default"


def check_implementation(value: object, where: str) -> str:
    if value not in CUSTOM_ALLREDUCE_IMPLEMENTATIONS:
        raise UsageError(f"{where}: custom_allreduce_impl must be one of {list(CUSTOM_ALLREDUCE_IMPLEMENTATIONS)}, "
                         f"got {value!r}")
    return str(value)


def builtin_stack(spec: str, option: str) -> Stack | None:
    """``full``, ``lean``, either with ``:v1`` (v1 custom all-reduce buffers) or ``:v2``, or ``installed``."""
    name, _, impl = spec.partition(":")
    if name not in BUILTIN_STACKS:
        return None
    stack = BUILTIN_STACKS[name]
    if impl:
        if impl not in CUSTOM_ALLREDUCE_IMPLEMENTATIONS:
            raise UsageError(f"{option} {spec!r}: custom all-reduce layout must be v1 or v2")
        stack = replace(stack, name=f"{name}:{impl}" if impl != "v2" else name, options={CUSTOM_ALLREDUCE_IMPL: impl})
    return stack

"""Pure rank arithmetic: the groups SGLang 0.5.23's ``initialize_model_parallel`` builds.

Nothing here touches torch, CUDA or the file system. Every loop below follows
``sglang/srt/distributed/parallel_state.py`` of the 0.5.23 wheel (PS:2566-3003;
see ``../shared/research/sglang_parallel_state.md`` section 2.1), including its
alias decisions and the fact that width-1 groups are still built as singletons.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

from memprobe.engines.api import GroupPlan, LayoutBase, Plan, flag_field
from memprobe.errors import UsageError

#: SGLang's creation order (the world group comes first, from
#: ``init_distributed_environment``). ``dcp``, ``shared_experts_tp`` and
#: ``pdmux_prefill_tp`` are off by default in SGLang and not modelled.
GROUP_ORDER: tuple[str, ...] = (
    "world",
    "tp",
    "attn_cp",
    "attention_tp",
    "moe_dp",
    "moe_ep",
    "moe_tp",
    "pp",
    "self_pp",
)
#: The groups of the MoE layers: what SGLang PR #22515 stopped giving communicators of their own.
MOE_GROUPS: tuple[str, ...] = ("moe_ep", "moe_tp")


@dataclass(frozen=True)
class SGLangLayout(LayoutBase):
    """Parallel widths, named as SGLang's server flags (``--tp``, ``--ep``, ...)."""

    tp: int = flag_field(flag="--tp", help="Tensor-parallel width (SGLang --tp).")
    ep: int = flag_field(flag="--ep", help="Expert-parallel width inside each TP group (SGLang --ep).")
    pp: int = flag_field(flag="--pp", help="Pipeline-parallel width (SGLang --pp); world size = tp x pp.")
    moe_dp: int = flag_field(flag="--moe-dp", help="MoE data-parallel width (SGLang --moe-dp-size).")
    attn_dp: int = flag_field(flag="--attn-dp", help="Attention data-parallel width (SGLang --attn-dp-size).")
    attn_cp: int = flag_field(flag="--attn-cp", help="Attention context-parallel width (SGLang --attn-cp-size).")

    def check(self) -> None:
        if self.ep > self.tp:
            raise UsageError(f"--ep {self.ep} is larger than --tp {self.tp}; expert parallelism lives inside a TP group")
        if self.tp % (self.ep * self.moe_dp) != 0:
            raise UsageError(
                f"--tp {self.tp} is not divisible by --ep {self.ep} x --moe-dp {self.moe_dp}; "
                f"MoE TP width = tp / ep / moe_dp must be whole"
            )
        if self.tp % (self.attn_dp * self.attn_cp) != 0:
            raise UsageError(
                f"--tp {self.tp} is not divisible by --attn-dp {self.attn_dp} x --attn-cp {self.attn_cp}; "
                f"attention TP width = tp / attn_dp / attn_cp must be whole"
            )

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def world_text(self) -> str:
        return f"--tp {self.tp} x --pp {self.pp}"

    @property
    def moe_tp(self) -> int:
        return self.tp // self.ep // self.moe_dp

    @property
    def attn_tp(self) -> int:
        return self.tp // self.attn_dp // self.attn_cp


LAYOUT_FIELDS: tuple[str, ...] = SGLangLayout.field_names()


def _lists(ranges: Iterator[range] | list[range]) -> tuple[tuple[int, ...], ...]:
    return tuple(map(tuple, ranges))


@lru_cache(maxsize=16)  # a Plan is immutable; compare, distinct and the estimate ask for the same layouts again
def plan_groups(layout: SGLangLayout) -> Plan:
    """Every group SGLang 0.5.23 creates for ``layout``, in creation order.

    One function of ~70 lines on purpose: it follows ``initialize_model_parallel`` group by group, so that it
    can be read line against line with SGLang's source (tests/fixtures/sglang-0.5.23-layouts.json checks it).
    """
    tp, pp, world = layout.tp, layout.pp, layout.world_size
    attn_dp, attn_cp, attn_tp = layout.attn_dp, layout.attn_cp, layout.attn_tp
    ep, moe_dp, moe_tp = layout.ep, layout.moe_dp, layout.moe_tp
    blocks = [t * tp for t in range(world // tp)]  # first rank of every TP group
    groups: dict[str, GroupPlan] = {}

    def alias(name: str, target: str) -> GroupPlan:
        return GroupPlan(name, groups[target].rank_lists, alias_of=target)

    groups["world"] = GroupPlan("world", _lists([range(world)]))
    groups["tp"] = GroupPlan("tp", _lists([range(b, b + tp) for b in blocks]))

    if attn_cp == tp:  # PS: _ATTN_CP = _TP
        groups["attn_cp"] = alias("attn_cp", "tp")
    else:
        groups["attn_cp"] = GroupPlan(
            "attn_cp",
            _lists(
                [
                    range(b + d * attn_tp * attn_cp + a, b + (d + 1) * attn_tp * attn_cp + a, attn_tp)
                    for b in blocks
                    for d in range(attn_dp)
                    for a in range(attn_tp)
                ]
            ),
        )

    if attn_tp == tp:
        groups["attention_tp"] = alias("attention_tp", "tp")
    else:
        groups["attention_tp"] = GroupPlan(
            "attention_tp",
            _lists([range(b + c * attn_tp, b + (c + 1) * attn_tp) for b in blocks for c in range(attn_cp * attn_dp)]),
        )

    if attn_cp > moe_dp:  # CP partners share tokens before MoE: MOE_DP = ATTN_CP
        groups["moe_dp"] = alias("moe_dp", "attn_cp")
    elif moe_dp == tp:
        groups["moe_dp"] = alias("moe_dp", "tp")
    else:
        stride = moe_tp * ep
        groups["moe_dp"] = GroupPlan(
            "moe_dp", _lists([range(b + i, b + tp + i, stride) for b in blocks for i in range(stride)])
        )

    if ep == tp:
        groups["moe_ep"] = alias("moe_ep", "tp")
    else:
        groups["moe_ep"] = GroupPlan(
            "moe_ep",
            _lists(
                [
                    range(b + d * ep * moe_tp + m, b + d * ep * moe_tp + m + ep * moe_tp, moe_tp)
                    for b in blocks
                    for d in range(moe_dp)
                    for m in range(moe_tp)
                ]
            ),
        )

    if moe_tp == tp:
        groups["moe_tp"] = alias("moe_tp", "tp")
    else:
        groups["moe_tp"] = GroupPlan(
            "moe_tp", _lists([range(b + i * moe_tp, b + (i + 1) * moe_tp) for b in blocks for i in range(ep * moe_dp)])
        )

    stages = world // pp
    groups["pp"] = GroupPlan("pp", _lists([range(i, world, stages) for i in range(stages)]))
    groups["self_pp"] = GroupPlan("self_pp", _lists([range(r, r + 1) for r in range(world)]))
    return Plan(layout=layout, groups=tuple(groups[name] for name in GROUP_ORDER))

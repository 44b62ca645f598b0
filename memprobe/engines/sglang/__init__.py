"""SGLang's start-up as a memprobe engine: ``--engine sglang-ref`` (memprobe's reproduction of SGLang 0.5.23's
``init_distributed_environment`` + ``initialize_model_parallel``; recorded as ``memprobe``, its older name) and
``--engine sglang`` (the installed SGLang's own code, with memprobe's samples around every group it builds).

* :mod:`.layout`: SGLang's widths and groups (``plan_groups``); :mod:`.stacks`: the built-in stacks;
* :mod:`.communicators`: the one eligibility rule; :mod:`.sizes`: custom all-reduce's buffers;
* :mod:`.reference` and :mod:`.real`: the worker-side builders (import torch; only inside workers);
* :mod:`.install`: the installed SGLang, read from its sources (never imported by the parent).
"""

from __future__ import annotations


from typing import Any, Mapping

from memprobe.engines.api import INSTALLED, REFERENCE, Allocation, Decision, Engine, Facts, GroupPlan, LayoutBase, Plan
from memprobe.engines.sglang import communicators, sizes
from memprobe.engines.sglang.install import (
    built_by_run, check_site, learnt_stack, release_partners, sglang_installation,
)
from memprobe.engines.sglang.layout import GROUP_ORDER, MOE_GROUPS, SGLangLayout, plan_groups
from memprobe.engines.sglang.stacks import (
    BUILTIN_NAMES, BUILTIN_NAMES_TEXT, BUILTIN_STACKS, CUSTOM_ALLREDUCE_IMPL, CUSTOM_ALLREDUCE_IMPLEMENTATIONS,
    builtin_stack, check_implementation,
)
from memprobe.engines.stacks import Stack
from memprobe.errors import UsageError
from memprobe.model.installation import EngineInstallation

#: What SGLang's engine sets unless the user already did (entrypoints/engine.py:1878-1921).
ENV_PRESET: dict[str, str] = {
    "NCCL_CUMEM_ENABLE": "0",
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    "CUDA_DEVICE_MAX_CONNECTIONS": "8",
}
V2_SOURCE = "sglang 0.5.23 device_communicators/custom_all_reduce_v2.py _init_workspace"
V1_SOURCE = "sglang 0.5.23 device_communicators/custom_all_reduce.py CustomAllreduce.__init__"


class SGLangEngine(Engine):
    name = "sglang"
    label = "SGLang"
    reference_release = "SGLang 0.5.23"  # engines/sglang/layout.py and stacks.py follow its parallel_state.py
    names = {"memprobe": REFERENCE, "sglang": INSTALLED}
    aliases = {"sglang-ref": "memprobe"}
    layout_type = SGLangLayout
    group_order = GROUP_ORDER
    kinds = communicators.KINDS
    env_presets = {"sglang": ENV_PRESET}
    env_prefixes = ("SGLANG_",)
    highlighted_groups = MOE_GROUPS
    stack_pair = ("full", "lean")
    narrow_table_groups = ("self_pp", "pp", "moe_dp", "attn_cp", "attention_tp")  # the rarest widths first
    narrow_highlighted_groups = ("moe_tp", "moe_ep")
    builders = {REFERENCE: "memprobe.engines.sglang.reference:ReferenceBuilder",
                INSTALLED: "memprobe.engines.sglang.real:InstalledBuilder"}
    width_1_reason = "SGLang builds none"
    default_stack = "lean"
    stack_option_names = (CUSTOM_ALLREDUCE_IMPL,)

    def plan(self, layout: LayoutBase) -> Plan:
        assert isinstance(layout, SGLangLayout)
        return plan_groups(layout)

    def describe_layout(self, layout: LayoutBase) -> str:
        assert isinstance(layout, SGLangLayout)
        return f"world size {layout.world_size}, moe_tp {layout.moe_tp}, attn_tp {layout.attn_tp}"

    def headline_layouts(self, widths: Mapping[str, int | None], baseline_first: int | None = None
                         ) -> tuple[LayoutBase | None, LayoutBase]:
        """``--tp T`` as the baseline (no MoE groups of its own), then the MoE layout (``--ep`` default tp / 2)."""
        given = {name: value for name, value in widths.items() if value is not None}
        tp = int(given["tp"])
        ep = int(given.get("ep") or max(1, tp // 2))
        rest = {name: given[name] for name in ("pp", "attn_dp", "attn_cp") if name in given}
        baseline = SGLangLayout(tp=baseline_first or tp, **rest)
        return baseline, SGLangLayout(tp=tp, ep=ep, moe_dp=int(given.get("moe_dp", 1)), **rest)

    def stacks(self) -> Mapping[str, Stack]:
        return BUILTIN_STACKS

    @property
    def builtin_stack_names(self) -> tuple[str, ...]:
        return BUILTIN_NAMES

    @property
    def builtin_stacks_text(self) -> str:
        return BUILTIN_NAMES_TEXT

    @property
    def stack_hint(self) -> str:
        return "full, lean"

    def builtin_stack(self, spec: str, option: str) -> Stack | None:
        return builtin_stack(spec, option)

    def stack_options(self, options: Mapping[str, Any], where: str, recorded: bool = False) -> dict[str, str]:
        unknown = set(options) - {CUSTOM_ALLREDUCE_IMPL}
        if unknown:
            raise UsageError(f"{where}: unknown stack setting(s) {sorted(unknown)}; SGLang's: {CUSTOM_ALLREDUCE_IMPL}")
        if CUSTOM_ALLREDUCE_IMPL not in options:
            raise UsageError(f"{where}: the stack is not a recorded stack (name, custom_allreduce_impl, groups): "
                             f"'{CUSTOM_ALLREDUCE_IMPL}'")
        value = options[CUSTOM_ALLREDUCE_IMPL]
        if recorded and value not in CUSTOM_ALLREDUCE_IMPLEMENTATIONS:
            raise UsageError(f"{where}: custom_allreduce_impl {value!r} is not one of "
                             f"{list(CUSTOM_ALLREDUCE_IMPLEMENTATIONS)}")
        return {CUSTOM_ALLREDUCE_IMPL: check_implementation(value, where)}

    def decide(self, group: GroupPlan, stack: Any, facts: Facts) -> list[Decision]:
        return communicators.decide(self, group, stack, facts)

    def sizes(self, decision: Decision, facts: Facts) -> list[Allocation]:
        if decision.kind != communicators.CUSTOM_ALLREDUCE.name:
            return super().sizes(decision, facts)
        if decision.implementation == "v2":
            plan = sizes.v2_workspace(facts.width, facts.capability // 10, facts.capability % 10, facts.sm_count)
            return [Allocation("symmetric workspace", plan.symmetric_bytes, "cumem", V2_SOURCE),
                    Allocation("graph table", plan.graph_params_bytes, "torch_cache", V2_SOURCE),
                    Allocation("push counter", plan.push_counter_bytes, "torch_cache", V2_SOURCE)]
        buffers = sizes.V1Buffers()
        return [Allocation("meta", buffers.meta_bytes, "raw", V1_SOURCE),
                Allocation("buffer", buffers.buffer_bytes, "raw", V1_SOURCE),
                Allocation("rank_data", buffers.rank_data_bytes, "torch_cache", V1_SOURCE)]

    # -- the installed SGLang
    def installation(self, environ: Mapping[str, str], site: str = "") -> EngineInstallation | None:
        return sglang_installation(dict(environ), site)

    def cpu_requirements_problem(self, environ: Mapping[str, str], installation: EngineInstallation | None
                                 ) -> str | None:
        from memprobe.engines.sglang.cpu_install import requirements_problem

        return requirements_problem(dict(environ), installation.version if installation else "")

    def check_site(self, site: str, given_as: str) -> str:
        return check_site(site, given_as)

    def learn_stack(self, cpu_run: Any) -> Stack:
        return learnt_stack(cpu_run)

    def release_partners(self, item: Any, references: list[Any]) -> list[Any]:
        return release_partners(item, references)

    def built_by_run(self, run: Any) -> dict[str, dict[str, bool]]:
        return built_by_run(run)


ENGINE = SGLangEngine()

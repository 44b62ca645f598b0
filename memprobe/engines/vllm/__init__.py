"""vLLM's start-up as a memprobe engine: ``--engine vllm-ref`` (memprobe's reproduction of vLLM 0.33.0's
``init_distributed_environment`` + ``initialize_model_parallel`` and each group's ``CudaCommunicator``; no vLLM
needed) and ``--engine vllm`` (the installed vLLM's own code, with memprobe's samples around every group it builds:
:mod:`.real`; the installation is read from its sources by :mod:`.install`, never imported by the parent).

* :mod:`.layout`: vLLM's widths, groups and refusals (``plan``); :mod:`.communicators`: the per-release rules
  (``decide``); :mod:`.sizes`: the bytes of vLLM's own buffers. This module adapts them to the seam
  (:class:`memprobe.engines.api.Engine`): a layout type with vLLM's flags, the stacks (one per release line, and
  the proposed ``shared-ep``), per-group decisions and allocations.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Mapping

from memprobe.engines.api import (
    INSTALLED, REFERENCE, Allocation, Decision, Engine, Facts, GroupPlan, Kind, LayoutBase, Plan, Verdict,
    flag_field,
)
from memprobe.engines.stacks import Stack, new_stack
from memprobe.engines.vllm import communicators as rules
from memprobe.engines.vllm import install, sizes
from memprobe.engines.vllm.layout import (
    DEFAULT_ALL2ALL_BACKEND, GROUP_ORDER, RELEASE, VLLMLayout, dense_hint, plan, release_problem,
)
from memprobe.errors import UsageError
from memprobe.model.installation import EngineInstallation

KINDS: tuple[Kind, ...] = (
    Kind(rules.PYNCCL, "pynccl", nccl=True),  # the label of the same kind in every engine (a step name)
    Kind(rules.SYMM_MEM, "torch symmetric memory"),
    Kind(rules.FLASHINFER_ALLREDUCE, "FlashInfer all-reduce"),
    Kind(rules.CUSTOM_ALLREDUCE, "custom all-reduce"),
    Kind(rules.CUSTOM_ALLREDUCE_MNNVL, "custom all-reduce MNNVL stage"),
    Kind(rules.ALL2ALL_MANAGER, "all2all manager"),
    Kind(rules.MQ_BROADCASTER, "MQ broadcaster (host)"),
)
RELEASE_LINE = "release_line"  # a stack setting: whose rules decide (communicators.RELEASE_LINES)
EP_PYNCCL = "ep_pynccl"  # a stack setting: "own" (vLLM) or "tp-when-same-ranks" (the proposed shared-ep)
EP_PYNCCL_CHOICES = ("own", "tp-when-same-ranks")
#: The stack name of each release line (``vllm`` is the newest).
LINE_STACKS: dict[str, str] = {"0.33": "vllm", "0.11-0.2x": "vllm:0.11", "0.10": "vllm:0.10"}
#: Which group may build which kind in any release modelled (the rules decide the rest): the stacks' flags.
_WHERE: dict[str, tuple[str, ...]] = {
    "tp": (rules.PYNCCL, rules.SYMM_MEM, rules.FLASHINFER_ALLREDUCE, rules.CUSTOM_ALLREDUCE,
           rules.CUSTOM_ALLREDUCE_MNNVL, rules.MQ_BROADCASTER),
    "dcp": (rules.PYNCCL, rules.MQ_BROADCASTER),
    "pcp": (rules.PYNCCL,), "pp": (rules.PYNCCL,), "dp": (rules.PYNCCL,),
    "ep": (rules.PYNCCL, rules.ALL2ALL_MANAGER), "eplb": (rules.PYNCCL,),
}
#: Where the PyNccl of an EP group built by TP's rank lists would be shared (shared-ep).
SHARED_EP = "shared-ep"
SHARED_EP_0_11 = "shared-ep:0.11"
INSTALLED_STACK = "installed"  # --engine vllm: vLLM's own decisions


# vLLM 0.33.0's PyNccl needs NCCL >= 2.29.7 (communicators.PYNCCL_MIN_NCCL_0_33); the release pins its NCCL
PINNED_NCCL = ("2.30.7", "vLLM 0.33.0's pin: torch==2.14.0, whose wheel requires nvidia-nccl-cu13==2.30.7")


@dataclass(frozen=True)
class VLLMEngineLayout(LayoutBase):
    """vLLM's parallel flags (``vllm serve`` spells them ``--tensor-parallel-size`` ...); checked as vLLM 0.33.0's
    ``ParallelConfig`` checks them (:class:`memprobe.engines.vllm.layout.VLLMLayout`)."""

    # each help is the command line's (memprobe/commands/options.py declares the options from these fields)
    tp: int = flag_field(flag="--tp", help="vLLM: --tensor-parallel-size.")
    pp: int = flag_field(flag="--pp", help="vLLM: --pipeline-parallel-size; world = dp x pp x pcp x tp.")
    dp: int = flag_field(flag="--dp", help="vLLM: data-parallel width (--data-parallel-size); world = dp x pp x pcp x tp.")
    dcp: int = flag_field(flag="--dcp", help="vLLM: decode context-parallel width (--decode-context-parallel-size).")
    pcp: int = flag_field(flag="--pcp", help="vLLM: prefill context-parallel width (--prefill-context-parallel-size).")
    enable_expert_parallel: bool = flag_field(False, flag="--enable-expert-parallel",
                                              help="vLLM: --enable-expert-parallel.")
    enable_eplb: bool = flag_field(False, flag="--enable-eplb", help="vLLM: --enable-eplb (needs EP).")
    moe: bool = flag_field(False, flag="--moe", off_flag="--dense",
                           help="vLLM: the model is a mixture of experts (vLLM 0.33 builds the EP group only then).")
    disable_custom_all_reduce: bool = flag_field(False, flag="--disable-custom-all-reduce",
                                                 help="vLLM: --disable-custom-all-reduce.")
    all2all_backend: str = flag_field(DEFAULT_ALL2ALL_BACKEND, flag="--all2all-backend",
                                      help=f"vLLM: --all2all-backend (default: vLLM's, {DEFAULT_ALL2ALL_BACKEND}).")

    def check(self) -> None:
        self.vllm()  # what every release refuses alike; a release's own refusals: VLLMEngine.stack_problem

    def vllm(self) -> VLLMLayout:
        """The same launch as the pure layout module's value (which also refuses what vLLM refuses)."""
        return VLLMLayout(**{item.name: getattr(self, item.name) for item in fields(self)})

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.pcp * self.tp

    def world_text(self) -> str:
        return f"--dp {self.dp} x --pp {self.pp} x --pcp {self.pcp} x --tp {self.tp}"

    def slug(self) -> str:
        """vLLM's short name: ``tp8-moe``, ``tp4-dp2-moe-ep-eplb``."""
        return self.vllm().slug()

    def _shown(self) -> list[tuple[str, int | bool | str]]:
        """TP always, every other flag unless at vLLM's default."""
        defaults = {item.name: item.default for item in fields(self)}
        values = [(item.name, getattr(self, item.name)) for item in fields(self)]
        return values[:1] + [(name, value) for name, value in values[1:] if value != defaults[name]]


@dataclass(frozen=True)
class VLLMGroupPlan(GroupPlan):
    """A group of vLLM's plan, carrying the launch its rules read (the rules decide per layout, not per group)."""

    launch: VLLMLayout | None = None


@lru_cache(maxsize=256)
def _decided(layout: VLLMLayout, line: str, stack: str, gpu: rules.GPUFacts, env: tuple[tuple[str, str], ...]
             ) -> rules.Decisions:
    return rules.decide(layout, line, stack, gpu, dict(env))


def gpu_facts(facts: Facts) -> rules.GPUFacts:
    """What vLLM's checks read, from what memprobe gathers: one node with full NVLink is an NVSwitch node here
    (multicast available, as on an HGX H100/H200 board); P2P is trusted as VLLM_SKIP_P2P_CHECK=1 trusts it."""
    same_node = facts.nodes == 1
    return rules.GPUFacts(capability=f"{facts.capability // 10}.{facts.capability % 10}", same_node=same_node,
                          fully_connected=facts.full_nvlink, p2p=same_node,
                          multicast=same_node and facts.full_nvlink, nccl=facts.nccl)


class VLLMEngine(Engine):
    name = "vllm"
    label = "vLLM"
    reference_release = f"vLLM {RELEASE}"
    names = {"vllm-ref": REFERENCE, "vllm": INSTALLED}
    layout_type = VLLMEngineLayout
    group_order = GROUP_ORDER
    kinds = KINDS
    env_presets = {"vllm": dict(rules.ENV_PRESET)}  # none: NCCL's defaults (cuMem on, lazy connection)
    env_prefixes = ("VLLM_",)
    highlighted_groups = ("ep", "eplb")
    stack_pair = ("vllm", SHARED_EP)
    builders = {REFERENCE: "memprobe.engines.vllm.reference:VLLMReferenceBuilder",
                INSTALLED: "memprobe.engines.vllm.real:VLLMInstalledBuilder"}
    width_1_reason = "vLLM builds none for one rank, parallel_state.py:550-561"
    installed_takes_stacks = False  # vLLM's own code decides; shared-ep on it is a patch to vLLM, not a stack
    pinned_nccl = PINNED_NCCL
    default_stack = "vllm"
    stack_option_names = (RELEASE_LINE, EP_PYNCCL)

    def plan(self, layout: LayoutBase) -> Plan:
        return self.plan_for(layout, self.stacks()[self.default_stack])

    def plan_for(self, layout: LayoutBase, stack: Any) -> Plan:
        """The groups of the stack's release line (vLLM 0.11 builds EP for dense models too, 0.33 has PCP, ETP
        and EPLB): :func:`memprobe.engines.vllm.layout.plan`."""
        problem = self.stack_problem(layout, stack)
        if problem is not None:
            raise UsageError(problem)
        return self._plan(layout, _line_of(stack))

    def stack_problem(self, layout: LayoutBase, stack: Any) -> str | None:
        assert isinstance(layout, VLLMEngineLayout)
        line, launch = _line_of(stack), layout.vllm()
        release = rules.RELEASE_OF_LINE[line]
        if line == "0.33" and launch.independent_replicas:  # one torch world per replica: memprobe runs one world
            problem: str | None = (f"--dp {layout.dp} without --moe: vLLM {release} runs a dense model's DP ranks as "
                                   f"independent engines, one world each (v1/engine/core.py:1546-1554 of {release}); "
                                   "plan one with --dp 1")
        else:
            problem = release_problem(launch, line)
        return None if problem is None else f"{problem} (stack {getattr(stack, 'name', stack)})"

    @staticmethod
    def _plan(layout: LayoutBase, line: str) -> Plan:
        assert isinstance(layout, VLLMEngineLayout)
        launch = layout.vllm()
        return Plan(layout=layout, groups=tuple(
            VLLMGroupPlan(group.name, group.rank_lists, alias_of=group.alias_of, launch=launch)
            for group in plan(launch, line).groups))

    def describe_layout(self, layout: LayoutBase) -> str:
        assert isinstance(layout, VLLMEngineLayout)
        return f"world size {layout.world_size}, {'MoE' if layout.moe else 'dense'} model"

    def no_highlighted_groups_hint(self, layout: LayoutBase) -> str:
        assert isinstance(layout, VLLMEngineLayout)
        if layout.moe:
            return ""
        asked = [layout.flag_of(name) for name in ("enable_expert_parallel", "enable_eplb") if getattr(layout, name)]
        return dense_hint(asked, layout.flag_of("moe"))

    # -- stacks
    def stacks(self) -> Mapping[str, Stack]:
        flags = {group: {kind: True for kind in kinds} for group, kinds in _WHERE.items()}
        found = {name: new_stack(self, name, flags, {RELEASE_LINE: line, EP_PYNCCL: "own"},
                                 description=f"vLLM {rules.RELEASE_OF_LINE[line]} as it is")
                 for line, name in LINE_STACKS.items()}
        found[SHARED_EP] = new_stack(self, SHARED_EP, flags, {RELEASE_LINE: "0.33", EP_PYNCCL: "tp-when-same-ranks"},
                                     description="proposed, not vLLM: EP and EPLB reuse TP's PyNccl when their "
                                                 "rank lists are TP's")
        # the 0.11-0.2x line has the duplicate too (EP's PyNccl since vllm PR #24982) and loads any NCCL of its era
        found[SHARED_EP_0_11] = new_stack(self, SHARED_EP_0_11, flags, {RELEASE_LINE: "0.11-0.2x",
                                                                        EP_PYNCCL: "tp-when-same-ranks"},
                                          description="proposed, not vLLM: vLLM 0.11.0 with EP reusing TP's PyNccl "
                                                      "when their rank lists are TP's")
        found[INSTALLED_STACK] = new_stack(self, INSTALLED_STACK, flags, {RELEASE_LINE: "0.33", EP_PYNCCL: "own"},
                                           description="--engine vllm only: what the installed vLLM's own code "
                                                       "builds; memprobe forces nothing")
        return found

    def stack_options(self, options: Mapping[str, Any], where: str, recorded: bool = False) -> dict[str, str]:
        unknown = set(options) - set(self.stack_option_names)
        if unknown:
            raise UsageError(f"{where}: unknown stack setting(s) {sorted(unknown)}; vLLM's: "
                             f"{', '.join(self.stack_option_names)}")
        line, ep = options.get(RELEASE_LINE, "0.33"), options.get(EP_PYNCCL, "own")
        if line not in rules.RELEASE_LINES:
            raise UsageError(f"{where}: {RELEASE_LINE} {line!r} is not one of {', '.join(rules.RELEASE_LINES)}")
        if ep not in EP_PYNCCL_CHOICES:
            raise UsageError(f"{where}: {EP_PYNCCL} {ep!r} is not one of {', '.join(EP_PYNCCL_CHOICES)}")
        return {RELEASE_LINE: str(line), EP_PYNCCL: str(ep)}

    # -- communicators
    def decide(self, group: GroupPlan, stack: Any, facts: Facts) -> list[Decision]:
        """vLLM's rules (:func:`memprobe.engines.vllm.communicators.decide`) for this group, after the common
        guards; a kind vLLM's rules take no decision on for the group is one it does not build there."""
        assert isinstance(group, VLLMGroupPlan) and group.launch is not None
        line = stack.option(RELEASE_LINE)
        variant = SHARED_EP if stack.option(EP_PYNCCL) == "tp-when-same-ranks" else "vllm"
        decided = _decided(group.launch, line, variant, gpu_facts(facts), tuple(sorted(facts.env.items())))
        release = rules.RELEASE_OF_LINE[line]
        try:
            entry: rules.GroupDecisions | None = decided.for_group(group.name)
        except KeyError:
            entry = None
        found: list[Decision] = []
        for kind, wanted in stack.flags_for(group.name).items():
            common = self.guard(group, kind, wanted, facts)
            if common is not None and common.verdict is Verdict.NO_DEVICE and entry is not None \
                    and not _gate_open(entry.group, kind, group.launch, line, facts.env):
                common = None  # closed by name, flag or env, as vLLM's code decides it on CPU too: say why
            if common is not None:
                found.append(common)
            elif entry is None:
                found.append(Decision(group.name, kind, Verdict.NOT_ELIGIBLE, reason=f"vLLM {release} has no "
                                      f"{group.name} group"))
            else:
                found.append(self._decision(entry.decision(kind), group.name, kind, release))
        return found

    @staticmethod
    def _decision(rule: rules.Decision | None, group: str, kind: str, release: str) -> Decision:
        if rule is None:
            return Decision(group, kind, Verdict.NOT_ELIGIBLE, reason=f"vLLM {release} builds none for this group")
        if rule.built:
            return Decision(group, kind, Verdict.BUILT, implementation=f"vLLM {release}")
        return Decision(group, kind, Verdict.NOT_ELIGIBLE, reason=f"{rule.reason} [{rule.source}]")

    def estimate_notes(self, stack: Any, nccl: str) -> list[str]:
        """vLLM 0.33.0 builds no PyNccl on an NCCL without ncclCommSuspend (communicators.PYNCCL_MIN_NCCL_0_33)."""
        if _line_of(stack) != "0.33" or not nccl or rules.nccl_loads_pynccl_0_33(nccl):
            return []
        return [f"vLLM 0.33.0 builds no PyNccl on NCCL {nccl}: its wrapper binds ncclCommSuspend (NCCL >= 2.29.7) and "
                f"disables PyNccl without it (pynccl.py:131-137), so none is estimated; the NCCL it pins is "
                f"{PINNED_NCCL[0]} (--nccl)"]

    def sizes(self, decision: Decision, facts: Facts) -> list[Allocation]:
        """vLLM's own buffers at init (:mod:`memprobe.engines.vllm.sizes`); objects that allocate at first use
        (FlashInfer's workspace, the all2all manager's buffers) hold nothing yet."""
        line = next(line for line, release in rules.RELEASE_OF_LINE.items() if decision.implementation == f"vLLM {release}")
        gpu = gpu_facts(facts)
        if decision.kind == rules.SYMM_MEM:
            size = sizes.symm_mem_max_size(line, gpu.capability, facts.width)
            assert size is not None  # decide builds it only where the table has the entry
            return [Allocation("symmetric-memory buffer", size, "cumem", "symm_mem.py:66-106 (0.33.0)")]
        if decision.kind == rules.CUSTOM_ALLREDUCE:
            # its max size depends on whether SymmMemCommunicator is live beside it (car:186-284 of 0.33.0)
            symm_on = (rules.cuda_gates(_tp_like(facts.width), VLLMLayout(tp=facts.width), line, facts.env)
                       .use_torch_symm_mem and gpu.multicast
                       and sizes.symm_mem_max_size(line, gpu.capability, facts.width) is not None)
            return [Allocation(a.name, a.nbytes, "torch_cache" if a.name == "rank_data" else "raw", a.source)
                    for a in sizes.custom_allreduce_allocations("tp", line, gpu.capability, facts.width, symm_on, False)]
        if decision.kind == rules.CUSTOM_ALLREDUCE_MNNVL:
            stage = [a for a in sizes.custom_allreduce_allocations("tp", line, gpu.capability, facts.width, False, True)
                     if a.kind == rules.CUSTOM_ALLREDUCE_MNNVL]
            return [Allocation(a.name, a.nbytes, "cumem", a.source) for a in stage]
        if decision.kind == rules.MQ_BROADCASTER:
            return [Allocation("shm ring (the group's first rank creates it, the others map it)",
                               sizes.mq_broadcaster_bytes(facts.width), "host",
                               "parallel_state.py:565-567; shm_broadcast.py:335-349 (0.33.0)")]
        return []  # FlashInfer all-reduce, all2all manager: built at init, buffers at first use


    # -- the installed vLLM (memprobe.engines.vllm.install reads it from its sources; .real runs it)
    def installation(self, environ: Mapping[str, str], site: str = "") -> EngineInstallation | None:
        return install.vllm_installation(dict(environ), site)

    def cpu_requirements_problem(self, environ: Mapping[str, str], installation: EngineInstallation | None
                                 ) -> str | None:
        return install.requirements_problem(dict(environ), installation.version if installation else "")

    def check_site(self, site: str, given_as: str) -> str:
        return install.check_site(site, given_as)

    def learn_stack(self, cpu_run: Any) -> Stack:
        return install.learnt_stack(cpu_run)

    def built_by_run(self, run: Any) -> dict[str, dict[str, bool]]:
        return install.built_by_run(run)


def _gate_open(group: Any, kind: str, launch: VLLMLayout, line: str, env: Mapping[str, str]) -> bool:
    """Whether CudaCommunicator's gates that read no hardware (the group's name, vLLM's flags, the environment)
    leave ``kind`` open for the group; a kind they do not gate is open."""
    gates = rules.cuda_gates(group, launch, line, env)
    return {rules.SYMM_MEM: gates.use_torch_symm_mem, rules.FLASHINFER_ALLREDUCE: gates.use_flashinfer_allreduce,
            rules.CUSTOM_ALLREDUCE: gates.use_custom_allreduce, rules.CUSTOM_ALLREDUCE_MNNVL: gates.use_custom_allreduce,
            rules.ALL2ALL_MANAGER: gates.use_all2all}.get(kind, True)


def _line_of(stack: Any) -> str:
    """The release line whose groups and rules a stack builds (a stack without one: the newest)."""
    return str(stack.options.get(RELEASE_LINE, rules.DEFAULT_RELEASE_LINE)) if stack is not None \
        else rules.DEFAULT_RELEASE_LINE


def _tp_like(width: int) -> Any:
    from memprobe.engines.vllm.layout import VLLMGroup

    return VLLMGroup("tp", (tuple(range(width)),))


ENGINE = VLLMEngine()

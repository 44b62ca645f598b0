"""Pure rank arithmetic: the groups vLLM 0.33.0's start-up builds, and the layouts its config refuses.

Nothing here touches torch, CUDA, vLLM or the file system. ``plan`` follows
``init_distributed_environment`` and ``initialize_model_parallel`` of the vLLM 0.33.0 wheel
(``vllm/distributed/parallel_state.py``, cited as PS:line) group by group: the rank array is
``arange(world).reshape(-1, dp, pp, pcp, tp)`` ("ExternalDP x DP x PP x PCP x TP", PS:2161-2167) and every
group is one transpose of it, reshaped to rows of the group's width. vLLM calls ``new_group`` (device
backend and gloo) for every row of every group, width-1 rows included (PS:502-520), so width-1 groups are
planned too. Validation mirrors ``vllm/config/parallel.py`` (cited as CP:line) of the same wheel.
``tests/fixtures/vllm-0.33.0-layouts.json`` (written by ``tools/vllm_layouts.py`` from the installed
vLLM's own code) checks ``plan``.

What is not modelled (off by default in vLLM 0.33.0): elastic EP (stateless DP/EP/EPLB groups), the
Engram ``etp``/``edp`` groups (``engram_config`` unset: ``_ETP`` is ``_TP``), ``inner_dp_world``
(multi-node DP only), ``VLLM_DISTRIBUTED_USE_SPLIT_GROUP=1`` and an external DP (the leading ``-1``
axis is always 1 here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Iterator

from memprobe.engines.api import GroupPlan
from memprobe.errors import UsageError

RELEASE = "0.33.0"

#: ``All2AllBackend`` of vLLM 0.33.0 (CP:45-60).
ALL2ALL_BACKENDS: tuple[str, ...] = (
    "naive", "pplx", "deepep_high_throughput", "deepep_low_latency", "deepep_v2", "mori_high_throughput",
    "mori_low_latency", "moonep", "nixl_ep", "allgather_reducescatter", "flashinfer_all2allv",
    "flashinfer_nvlink_two_sided", "flashinfer_nvlink_one_sided", "passthrough",
)
#: Removed backends vLLM 0.33.0 accepts and replaces, with a warning (CP:537-543).
REMOVED_ALL2ALL_BACKENDS: tuple[str, ...] = ("pplx", "naive")
DEFAULT_ALL2ALL_BACKEND = "allgather_reducescatter"  # CP:220
#: ``use_sequence_parallel_moe`` holds only for these backends (CP:770-782).
SEQUENCE_PARALLEL_MOE_BACKENDS: tuple[str, ...] = (
    "allgather_reducescatter", "deepep_high_throughput", "deepep_low_latency", "deepep_v2",
    "flashinfer_nvlink_one_sided", "passthrough", "mori_high_throughput", "mori_low_latency", "nixl_ep",
)

#: vLLM 0.33.0's creation order. ``etp`` is an alias of ``tp`` (PS:2183-2191: no Engram config);
#: ``ep`` exists only for MoE models, ``eplb`` only with ``--enable-eplb`` on a MoE model.
GROUP_ORDER: tuple[str, ...] = ("world", "tp", "etp", "dcp", "pcp", "pp", "dp", "ep", "eplb")

SIZE_FIELDS: tuple[str, ...] = ("tp", "pp", "dp", "dcp", "pcp")
#: The most ranks memprobe plans for one layout (every rank list of every group is held in memory).
MAX_WORLD_SIZE = 65536

_AXIS = {"dp": 1, "pp": 2, "pcp": 3, "tp": 4}  # axes of the (-1, dp, pp, pcp, tp) rank array


@dataclass(frozen=True)
class VLLMLayout:
    """A vLLM launch, in vLLM's own flag names (``--tensor-parallel-size`` is ``tp``, ...).

    ``moe`` says whether the served model is a mixture of experts (vLLM reads ``model_config.is_moe``);
    vLLM 0.33.0 builds the EP group only for MoE models (PS:2326-2327) and runs a dense model's DP ranks as
    independent engines (``v1/engine/core.py:1546-1554``).
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    dcp: int = 1
    pcp: int = 1
    enable_expert_parallel: bool = False
    enable_eplb: bool = False
    moe: bool = False
    disable_custom_all_reduce: bool = False
    all2all_backend: str = DEFAULT_ALL2ALL_BACKEND

    def __post_init__(self) -> None:
        for name in SIZE_FIELDS:  # Field(default=1, ge=1): CP:140,142,144,147,389
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name} must be a whole number >= 1, got {value!r}")
        for name in ("enable_expert_parallel", "enable_eplb", "moe", "disable_custom_all_reduce"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.all2all_backend not in ALL2ALL_BACKENDS:  # the All2AllBackend Literal, CP:45-60
            raise UsageError(f"--all2all-backend {self.all2all_backend!r} is not one of vLLM {RELEASE}'s: "
                             f"{', '.join(ALL2ALL_BACKENDS)}")
        if self.world_size > MAX_WORLD_SIZE:
            raise UsageError(f"--dp {self.dp} x --pp {self.pp} x --pcp {self.pcp} x --tp {self.tp} = {self.world_size} "
                             f"ranks; memprobe plans at most {MAX_WORLD_SIZE}")
        if self.enable_eplb and not self.enable_expert_parallel:  # CP:569-570
            raise UsageError("--enable-eplb needs --enable-expert-parallel (vLLM: 'enable_expert_parallel must be "
                             "True to use EPLB')")
        if self.enable_eplb and self.tp * self.pcp * self.dp <= 1:  # CP:571-584
            raise UsageError(f"--enable-eplb needs TP, PCP or DP > 1 (the EP group spans them); got --tp {self.tp} "
                             f"--pcp {self.pcp} --dp {self.dp}")
        if self.pcp == 1 and self.tp % self.dcp != 0:  # CP:596-600
            raise UsageError(f"--tp {self.tp} must be divisible by --dcp {self.dcp} (DCP reuses the TP ranks)")
        if self.pcp > 1 and self.dcp not in (1, self.pcp, self.tp * self.pcp):  # CP:601-607
            raise UsageError(f"with --pcp {self.pcp}, --dcp must be 1, PCP or TP x PCP "
                             f"({sorted({1, self.pcp, self.tp * self.pcp})}); got {self.dcp}")

    # ------------------------------------------------------------------ widths vLLM derives

    @property
    def world_size(self) -> int:
        """Every rank of the launch: dp x pp x pcp x tp (``world_size_across_dp``, CP:627-629, 962-968)."""
        return self.dp * self.pp * self.pcp * self.tp

    @property
    def replica_world_size(self) -> int:
        """Ranks of one DP replica: pp x pcp x tp (``ParallelConfig.world_size``, CP:964-968)."""
        return self.pp * self.pcp * self.tp

    @property
    def independent_replicas(self) -> bool:
        """A dense model's DP ranks are separate engines: ``reconfigure_for_independent_dp_rank`` (CP:1191-1201)
        sets DP to 1 in each (``v1/engine/core.py:1546-1554``), so no group spans two replicas."""
        return self.dp > 1 and not self.moe

    @property
    def replicas(self) -> int:
        """Independent process worlds: ``dp`` for a dense model with DP > 1, else 1."""
        return self.dp if self.independent_replicas else 1

    @property
    def group_dp(self) -> int:
        """The DP width vLLM's groups see (1 in an independent dense replica)."""
        return 1 if self.independent_replicas else self.dp

    @property
    def group_world_size(self) -> int:
        """Ranks of one torch world: the world group's width."""
        return self.group_dp * self.replica_world_size

    @property
    def effective_all2all_backend(self) -> str:
        """The backend vLLM keeps: ``pplx`` and ``naive`` fall back to the default (CP:537-543)."""
        return DEFAULT_ALL2ALL_BACKEND if self.all2all_backend in REMOVED_ALL2ALL_BACKENDS else self.all2all_backend

    @property
    def use_sequence_parallel_moe(self) -> bool:
        """CP:770-785, on the widths the groups see."""
        return (self.effective_all2all_backend in SEQUENCE_PARALLEL_MOE_BACKENDS and self.enable_expert_parallel
                and self.tp > 1 and self.group_dp > 1)

    @property
    def use_all2all(self) -> bool:
        """``ParallelConfig.use_all2all`` (CP:787-793): passed to the EP group only (PS:2344-2357)."""
        return self.group_dp > 1 or self.use_sequence_parallel_moe or (self.enable_expert_parallel and self.pcp > 1)

    def as_dict(self) -> dict[str, int | bool | str]:
        return asdict(self)

    def flags(self) -> str:
        """vLLM-style flags that give this layout (defaults left out)."""
        parts = [f"--tp {self.tp}"]
        parts += [f"--{name} {getattr(self, name)}" for name in SIZE_FIELDS[1:] if getattr(self, name) != 1]
        parts.append("--moe" if self.moe else "--dense")
        for name in ("enable_expert_parallel", "enable_eplb", "disable_custom_all_reduce"):
            if getattr(self, name):
                parts.append("--" + name.replace("_", "-"))
        if self.all2all_backend != DEFAULT_ALL2ALL_BACKEND:
            parts.append(f"--all2all-backend {self.all2all_backend}")
        return " ".join(parts)

    def slug(self) -> str:
        """Short name for folders and labels: ``tp8-moe-ep``."""
        parts = [f"tp{self.tp}"] + [f"{name}{getattr(self, name)}" for name in SIZE_FIELDS[1:] if getattr(self, name) != 1]
        parts.append("moe" if self.moe else "dense")
        parts += [label for name, label in (("enable_expert_parallel", "ep"), ("enable_eplb", "eplb"),
                                            ("disable_custom_all_reduce", "noca")) if getattr(self, name)]
        if self.all2all_backend != DEFAULT_ALL2ALL_BACKEND:
            parts.append(self.all2all_backend.replace("_", ""))
        return "-".join(parts)


@dataclass(frozen=True)
class VLLMGroup(GroupPlan):
    """One ``GroupCoordinator`` (or a module global that is the same object as another): a planned group with the
    switches vLLM's ``init_model_parallel_group`` passes it."""

    use_device_communicator: bool = True  # init_model_parallel_group's default (PS:1520-1528)
    use_message_queue_broadcaster: bool = False
    use_all2all: bool = False

    @property
    def unique_name(self) -> str:
        """``_get_unique_name`` (PS:145-157): the first group of a name is ``<name>:0``; CudaCommunicator's gates read it."""
        return f"{self.name}:0"

    @property
    def builds_device_communicator(self) -> bool:
        """PS:550-561: only with ``use_device_communicator`` and more than one rank."""
        return not self.is_alias and self.use_device_communicator and self.width > 1

    @property
    def builds_mq_broadcaster(self) -> bool:
        """PS:563-567: only with ``use_message_queue_broadcaster`` and more than one rank."""
        return not self.is_alias and self.use_message_queue_broadcaster and self.width > 1


@dataclass(frozen=True)
class VLLMPlan:
    """Every group of one torch world, in creation order.

    Rank lists are ranks of one process world. With ``layout.replicas > 1`` (a dense model with DP > 1) each
    replica is its own world with the same lists; replica ``r``'s rank ``i`` is launch rank
    ``r * layout.replica_world_size + i``.
    """

    layout: VLLMLayout
    groups: tuple[VLLMGroup, ...] = field(default_factory=tuple)

    def group(self, name: str) -> VLLMGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def has_group(self, name: str) -> bool:
        return any(group.name == name for group in self.groups)

    def built_groups(self) -> Iterator[VLLMGroup]:
        """Groups that create process groups of their own (aliases excluded)."""
        return (group for group in self.groups if not group.is_alias)


def _rows(dp: int, pp: int, pcp: int, tp: int, swap: tuple[int, int] | None, width: int) -> tuple[tuple[int, ...], ...]:
    """``all_ranks.transpose(*swap).reshape(-1, width)`` rows, where
    ``all_ranks = arange(W).reshape(-1, dp, pp, pcp, tp)`` (PS:2158-2164; no external DP: the -1 axis is 1)."""
    shape = [1, dp, pp, pcp, tp]
    strides = [0] * 5
    step = 1
    for axis in range(4, -1, -1):
        strides[axis] = step
        step *= shape[axis]
    order = list(range(5))
    if swap is not None:
        order[swap[0]], order[swap[1]] = order[swap[1]], order[swap[0]]
    flat: list[int] = []

    def walk(depth: int, offset: int) -> None:
        if depth == 5:
            flat.append(offset)
            return
        axis = order[depth]
        for index in range(shape[axis]):
            walk(depth + 1, offset + index * strides[axis])

    walk(0, 0)
    return tuple(tuple(flat[start:start + width]) for start in range(0, len(flat), width))


#: Release lines memprobe models, newest first; their groups and flags differ (see ``plan``, ``release_problem``).
RELEASE_LINES: tuple[str, ...] = ("0.33", "0.11-0.2x", "0.10")
#: The wheel each release line was read from.
RELEASE_OF_LINE: dict[str, str] = {"0.33": "0.33.0", "0.11-0.2x": "0.11.0", "0.10": "0.10.2"}
#: Before 0.33 the all2all backend is the environment variable VLLM_ALL2ALL_BACKEND, not a flag: 0.11.0 checks
#: its choices (``envs.py:1240-1246``); 0.10.2 takes any value and its CudaCommunicator knows these four
#: (``device_communicators/cuda_communicator.py:84-103``).
OLD_ALL2ALL_BACKENDS: dict[str, tuple[str, ...]] = {
    "0.11-0.2x": ("naive", "pplx", "deepep_high_throughput", "deepep_low_latency", "allgather_reducescatter",
                  "flashinfer_all2allv"),
    "0.10": ("naive", "pplx", "deepep_high_throughput", "deepep_low_latency"),
}
#: VLLM_ALL2ALL_BACKEND's default: 0.11.0 ``envs.py:1241``, 0.10.2 ``envs.py:1059-1060``.
OLD_DEFAULT_ALL2ALL_BACKEND = {"0.11-0.2x": "allgather_reducescatter", "0.10": "naive"}


def check_release_line(release_line: str) -> str:
    if release_line not in RELEASE_LINES:
        raise UsageError(f"unknown vLLM release line {release_line!r}; one of {', '.join(RELEASE_LINES)}")
    return release_line


def all2all_backend(layout: VLLMLayout, release_line: str) -> str:
    """The backend the release runs: the layout's, where it is not the (0.33) default; else the release's default."""
    if release_line == "0.33":
        return layout.effective_all2all_backend
    if layout.all2all_backend == DEFAULT_ALL2ALL_BACKEND:
        return OLD_DEFAULT_ALL2ALL_BACKEND[release_line]
    return layout.all2all_backend


def release_problem(layout: VLLMLayout, release_line: str) -> str | None:
    """Why the release cannot run ``layout`` (one line naming the release), or None. ``VLLMLayout`` itself checks
    what every release line refuses alike (EPLB needs EP and a wide EP group, TP divisible by DCP: 0.11.0's
    ``config/parallel.py:417-432`` and ``engine/arg_utils.py:1184-1187``, the same checks in 0.10.2)."""
    line = check_release_line(release_line)
    release = RELEASE_OF_LINE[line]
    if line == "0.33":
        return None
    if layout.pcp != 1:  # ParallelConfig of 0.11.0/0.10.2 has no prefill_context_parallel_size (config/parallel.py)
        return (f"--pcp {layout.pcp}: vLLM {release} has no prefill context parallelism (no "
                f"--prefill-context-parallel-size; it came with vLLM 0.12+); use --pcp 1 or stack vllm")
    if layout.all2all_backend != DEFAULT_ALL2ALL_BACKEND and layout.all2all_backend not in OLD_ALL2ALL_BACKENDS[line]:
        return (f"--all2all-backend {layout.all2all_backend}: vLLM {release} has no such backend "
                f"(VLLM_ALL2ALL_BACKEND: {', '.join(OLD_ALL2ALL_BACKENDS[line])})")
    return None


@lru_cache(maxsize=64)  # a plan is immutable; callers ask for the same layouts again
def plan(layout: VLLMLayout, release_line: str = "0.33") -> VLLMPlan:
    """Every group vLLM creates for ``layout`` in one process world, in creation order, as the release line's
    ``initialize_model_parallel`` does. ``"0.33"`` follows vLLM 0.33.0; ``"0.11-0.2x"`` and ``"0.10"`` follow
    0.11.0's and 0.10.2's, which are the same code (see :func:`_plan_011`). Refuses (:class:`UsageError`) what
    :func:`release_problem` names.
    """
    problem = release_problem(layout, release_line)
    if problem is not None:
        raise UsageError(problem)
    return _plan_033(layout) if release_line == "0.33" else _plan_011(layout)


def _plan_033(layout: VLLMLayout) -> VLLMPlan:
    tp, pp, pcp, dcp, dp = layout.tp, layout.pp, layout.pcp, layout.dcp, layout.group_dp
    world = layout.group_world_size

    def rows(swap: tuple[int, int] | None, width: int) -> tuple[tuple[int, ...], ...]:
        return _rows(dp, pp, pcp, tp, swap, width)

    groups: list[VLLMGroup] = [
        # init_world_group: use_device_communicator=False (PS:1508-1517, PS:2011-2013)
        VLLMGroup("world", (tuple(range(world)),), use_device_communicator=False),
        # all_ranks.view(-1, tp); the MQ broadcaster on TP (PS:2168-2181)
        VLLMGroup("tp", rows(None, tp), use_message_queue_broadcaster=True),
    ]
    groups.append(VLLMGroup("etp", groups[1].rank_lists, alias_of="tp"))  # _ETP = _TP (PS:2183-2191)
    # DCP spans PCP first, then TP, when > 1; width-1 rows of the untransposed array otherwise (PS:2247-2264)
    groups.append(VLLMGroup("dcp", rows((3, 4) if dcp > 1 else None, dcp), use_message_queue_broadcaster=True))
    groups.append(VLLMGroup("pcp", rows((_AXIS["pcp"], _AXIS["tp"]), pcp)))  # PS:2266-2284
    groups.append(VLLMGroup("pp", rows((_AXIS["pp"], _AXIS["tp"]), pp)))  # PS:2286-2302
    groups.append(VLLMGroup("dp", rows((_AXIS["dp"], _AXIS["tp"]), dp)))  # PS:2304-2322
    if layout.moe:  # "Don't create EP group for dense models" (PS:2326-2327)
        ep_rows = rows((_AXIS["dp"], _AXIS["pp"]), dp * pcp * tp)  # PS:2328-2357
        groups.append(VLLMGroup("ep", ep_rows, use_all2all=layout.use_all2all))
        if layout.enable_eplb:  # same ranks as EP, a separate coordinator (PS:2359-2382)
            groups.append(VLLMGroup("eplb", ep_rows))
    return VLLMPlan(layout=layout, groups=tuple(groups))


#: Where vLLM 0.33.0 skips the EP group of a dense model, as :func:`_plan_033` cites it.
DENSE_SKIPS_EP = "parallel_state.py:2326-2327"


def dense_hint(asked: list[str], moe_flag: str) -> str:
    """Why a dense layout builds no EP group (vLLM 0.33.0's rule, :func:`_plan_033`): ``asked`` the EP flags it was
    given, which then build nothing."""
    rule = f"vLLM {RELEASE} builds the EP group only for MoE models ({DENSE_SKIPS_EP}): add {moe_flag}"
    return f"{' and '.join(asked)} {'builds' if len(asked) == 1 else 'build'} nothing on a dense model; {rule}" \
        if asked else rule


def _plan_011(layout: VLLMLayout) -> VLLMPlan:
    """0.11.0's ``initialize_model_parallel`` (``parallel_state.py:1090-1212``, cited as PS11:line); 0.10.2's is the
    same code 43 lines earlier (``:1047-1169``). Where it differs from 0.33.0:

    * the rank array is ``arange(W).reshape(-1, DP, PP, TP)``: no PCP axis (PS11:1141-1143);
    * no ETP alias, no PCP group, no EPLB group (none of ``_ETP``, ``_PCP``, ``_EPLB`` exists);
    * DCP is ``all_ranks.reshape(-1, dcp)`` whatever its width (PS11:1166-1173), not a transpose;
    * the EP group is built for every model, dense included: ``model_config.is_moe`` is not read (PS11:1198-1206;
      0.33.0 skips it for dense models, its ``parallel_state.py:2326-2327``);
    * a dense model's DP ranks join one world with a DP group, as a MoE's do: ``init_distributed_environment``
      rebases every DP rank into ``world_size_across_dp`` (PS11:1035-1049), the independent dense DP engine came
      with vllm PR #30739;
    * ``init_model_parallel_group`` hard-codes ``use_device_communicator=True`` and takes no ``use_all2all``
      (PS11:916-930): the communicator decides all2all itself from DP > 1 on a group named ``ep``
      (``base_device_communicator.py:112-122`` of 0.11.0).
    """
    tp, pp, dp, dcp = layout.tp, layout.pp, layout.dp, layout.dcp
    world = layout.world_size

    def rows(swap: tuple[int, int] | None, width: int) -> tuple[tuple[int, ...], ...]:
        return _rows(dp, pp, 1, tp, swap, width)  # (-1, DP, PP, TP) is (-1, DP, PP, 1, TP) with PCP 1

    return VLLMPlan(layout=layout, groups=(
        # init_world_group: use_device_communicator=False (PS11:905-913)
        VLLMGroup("world", (tuple(range(world)),), use_device_communicator=False),
        VLLMGroup("tp", rows(None, tp), use_message_queue_broadcaster=True),  # view(-1, TP), PS11:1148-1156
        VLLMGroup("dcp", rows(None, dcp), use_message_queue_broadcaster=True),  # reshape(-1, dcp), PS11:1166-1173
        VLLMGroup("pp", rows((_AXIS["pp"], _AXIS["tp"]), pp)),  # transpose(2, 3) of the 4-D array, PS11:1179-1185
        VLLMGroup("dp", rows((_AXIS["dp"], _AXIS["tp"]), dp)),  # transpose(1, 3), PS11:1189-1196
        # transpose(1, 2).reshape(-1, DP x TP), for every model (PS11:1200-1206)
        VLLMGroup("ep", rows((_AXIS["dp"], _AXIS["pp"]), dp * tp), use_all2all=dp > 1),
    ))

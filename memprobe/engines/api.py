"""The seam between "whose start-up" and everything else: the typed values an engine trades, and the interface
:class:`Engine` every engine implements (parent side: nothing here imports torch).

An engine (``memprobe/engines/<name>/``) says, for its layout (a :class:`LayoutBase`): which groups it builds and in
which order (:meth:`Engine.plan` -> :class:`Plan`), which communicators each group builds for a stack
(:meth:`Engine.decide` -> :class:`Decision`, one rule that the worker, the estimate and the reports all call), how
many bytes each of its own communicator kinds allocates (:meth:`Engine.sizes` -> :class:`Allocation`; NCCL
communicators are sized by :mod:`memprobe.estimate.nccl`), and the worker-side builder that reproduces its start-up
(``reference``) or runs the installed engine's own code (``installed``). The generic parts (launch, worker
template, records, estimate, reports, gate) ask :func:`memprobe.engines.get` and never name an engine's groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar, Iterator, Literal, Mapping

from memprobe.engines.stacks import resolve_stack
from memprobe.errors import UsageError
from memprobe.model.installation import EngineInstallation

#: The world group: created by ``init_process_group`` in every engine, first in every plan.
WORLD = "world"
#: The most ranks a layout may have. Planning one holds every rank list of every group in memory
#: (65536 ranks: ~1 s and a few hundred MB); far above any node or cluster an engine runs on.
MAX_WORLD_SIZE = 65536

Mode = Literal["reference", "installed"]
REFERENCE: Mode = "reference"
INSTALLED: Mode = "installed"


@dataclass(frozen=True)
class Kind:
    """A communicator kind an engine builds per group: its name is a step name and a stack's flag."""

    name: str  # "pynccl", "custom_allreduce", "symm_mem", "mq_broadcaster"
    label: str  # "custom all-reduce": tables and the plot's legend
    nccl: bool = False  # an NCCL communicator: the estimate sizes it from NCCL's rules, not from Engine.sizes


class Verdict(StrEnum):
    """What became of one communicator of one group."""

    BUILT = "built"
    OFF = "off"  # the stack does not ask for it
    ALIAS = "alias"  # the group is another group's object: it builds nothing of its own
    WIDTH_1 = "width-1"  # a group of one rank builds no communicator
    NOT_ELIGIBLE = "not-eligible"  # asked for, but the engine's rule refuses it here (reason says why)
    NO_DEVICE = "no-device"  # --device cpu: no GPU communicator
    FAILED = "failed"  # tried and failed (the engine goes on without it)


#: How a decision reads in ``run.json``'s per-rank ``communicators`` (the on-disk words of every memprobe so far).
_TEXT_PREFIX = {Verdict.OFF: "skipped: ", Verdict.NO_DEVICE: "skipped: ", Verdict.NOT_ELIGIBLE: "disabled: ",
                Verdict.FAILED: "failed: "}


@dataclass(frozen=True)
class Decision:
    """One communicator of one group: built or not, and why (replaces free text parsed back)."""

    group: str
    kind: str
    verdict: Verdict
    reason: str = ""
    implementation: str | None = None  # e.g. custom all-reduce "v1" / "v2"
    planned_bytes: int | None = None  # what the worker's builder allocated, where it knows

    @property
    def built(self) -> bool:
        return self.verdict is Verdict.BUILT

    @property
    def skipped(self) -> bool:
        """A step that did not run (its reading is marked skipped); a failure is not a skip."""
        return self.verdict not in (Verdict.BUILT, Verdict.FAILED)

    def text(self) -> str:
        """The word ``run.json`` keeps for it (``RankInfo.communicators[group][kind]``), and the reading's note."""
        if self.verdict is Verdict.BUILT:
            implementation = f" {self.implementation}" if self.implementation else ""
            planned = f" ({self.planned_bytes} bytes planned)" if self.planned_bytes is not None else ""
            return f"built{implementation}{planned}"
        if self.verdict is Verdict.WIDTH_1:
            return f"skipped: width 1 ({self.reason})" if self.reason else "skipped: width 1"
        if self.verdict is Verdict.ALIAS:
            return f"skipped: alias of {self.reason}"
        return _TEXT_PREFIX[self.verdict] + self.reason

    @classmethod
    def from_text(cls, group: str, kind: str, text: str) -> "Decision":
        """The decision a recorded word stands for (the inverse of :meth:`text`, for records on disk)."""
        if text.startswith("built"):
            rest = text[len("built"):].strip()
            implementation, _, planned = rest.partition(" (")
            planned_bytes = int(planned.split()[0]) if planned[:1].isdigit() else None
            return cls(group, kind, Verdict.BUILT, implementation=implementation or None, planned_bytes=planned_bytes)
        if text.startswith("skipped: width 1"):
            return cls(group, kind, Verdict.WIDTH_1, reason=text[len("skipped: width 1 ("):-1])
        if text.startswith("skipped: alias of "):
            return cls(group, kind, Verdict.ALIAS, reason=text[len("skipped: alias of "):])
        if text.startswith("skipped: --device cpu"):
            return cls(group, kind, Verdict.NO_DEVICE, reason=text[len("skipped: "):])
        for verdict in (Verdict.OFF, Verdict.NOT_ELIGIBLE, Verdict.FAILED):
            if text.startswith(_TEXT_PREFIX[verdict]):
                return cls(group, kind, verdict, reason=text[len(_TEXT_PREFIX[verdict]):])
        raise ValueError(f"{group}/{kind}: {text!r} is not a recorded communicator decision")


@dataclass(frozen=True)
class Facts:
    """What an eligibility rule may look at: gathered by the worker from its group, assumed by the estimate from
    the topology and the calibration."""

    width: int
    nodes: int = 1
    full_nvlink: bool = True
    capability: int = 90  # compute capability as major * 10 + minor
    sm_count: int = 132
    device: str = "cuda"
    env: Mapping[str, str] = field(default_factory=dict)
    #: The NCCL release the communicators load ("2.28.9"): the worker's torch's on a GPU, the rules' in an estimate;
    #: "" where none is loaded (a CPU run: memprobe gives the engine no NCCL there).
    nccl: str = ""


Pool = Literal["raw", "cumem", "torch_cache", "host"]


@dataclass(frozen=True)
class Allocation:
    """One allocation of an engine's own communicator, for the estimate; ``source`` cites the upstream line."""

    what: str
    nbytes: int
    pool: Pool  # raw: cudaMalloc'd; cumem: whole cuMem granules; torch_cache: through torch's caching allocator; host
    source: str


# ------------------------------------------------------------------------------------------------ layouts


#: The command-line option that gives a layout field no option of its own declares: ``--layout NAME=VALUE``.
LAYOUT_OPTION = "--layout"


def flag_field(default: int | bool | str = 1, *, flag: str | None, help: str, off_flag: str | None = None) -> Any:
    """A layout width (or switch, or named choice) that is also a command-line flag (``--tp``): declared once, with
    its help. ``flag=None``: a field memprobe's commands declare no option for (a plug-in engine's own width), given
    as ``--layout NAME=VALUE`` on the command line and as ``layout=("NAME=VALUE",)`` to the API. ``off_flag``: a
    switch's off form where it has a name of its own (vLLM's ``--moe/--dense``)."""
    return field(default=default, metadata={"flag": flag, "help": help, "off_flag": off_flag})


@dataclass(frozen=True)
class LayoutBase:
    """An engine's parallel widths: a frozen dataclass of whole numbers, each field declaring its flag
    (:func:`flag_field`). Subclasses give :attr:`world_size` and check their own arithmetic in :meth:`check`."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type in ("bool", bool):  # a switch (vLLM's --moe/--dense), not a width
                if not isinstance(value, bool):
                    raise UsageError(f"{self.flag_of(item.name)} must be true or false, got {value!r}")
            elif item.type in ("str", str):  # a named choice (vLLM's --all2all-backend): check() checks the name
                if not isinstance(value, str):
                    raise UsageError(f"{self.flag_of(item.name)} must be a name, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{self.flag_of(item.name)} must be a whole number >= 1, got {value!r}")
        if self.world_size > MAX_WORLD_SIZE:
            raise UsageError(f"{self.world_text()} = {self.world_size} ranks; memprobe plans and measures at most "
                             f"{MAX_WORLD_SIZE}")
        self.check()

    def world_text(self) -> str:
        """How the world size is made, for messages: ``--tp 4 x --pp 2``."""
        return self.flags()

    def check(self) -> None:
        """Refuse what the engine refuses (one line, :class:`UsageError`)."""

    @property
    def world_size(self) -> int:
        raise NotImplementedError

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in fields(cls))

    @classmethod
    def flag_of(cls, name: str) -> str:
        """How the command line names the field: its flag, or ``--layout NAME`` for one without."""
        for item in fields(cls):
            if item.name == name:
                if "flag" in item.metadata and item.metadata["flag"] is None:
                    return f"{LAYOUT_OPTION} {name}"
                return str(item.metadata.get("flag") or f"--{name.replace('_', '-')}")
        raise KeyError(name)

    @classmethod
    def spellings(cls, name: str) -> tuple[str, ...]:
        """How the command line writes the field: its flag, and a switch's off form where it has one (``--moe``,
        ``--dense``); none for a field without a flag of its own."""
        item = next(item for item in fields(cls) if item.name == name)
        if not cls.has_own_flag(name):
            return ()
        off = item.metadata.get("off_flag")
        return (cls.flag_of(name), off) if off else (cls.flag_of(name),)

    @classmethod
    def is_switch(cls, name: str) -> bool:
        return next(item for item in fields(cls) if item.name == name).type in ("bool", bool)

    @classmethod
    def help_of(cls, name: str) -> str:
        return str(next(item for item in fields(cls) if item.name == name).metadata.get("help", ""))

    @classmethod
    def has_own_flag(cls, name: str) -> bool:
        return next(item for item in fields(cls) if item.name == name).metadata.get("flag", "") is not None

    @classmethod
    def parse_field(cls, item: str, where: str = LAYOUT_OPTION) -> tuple[str, int | bool | str]:
        """``NAME=VALUE`` as the named field's value, of its type (a whole number, true/false, a name); one line
        (:class:`UsageError`) for a name the layout has not or a value of the wrong kind."""
        name, equals, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or not name:
            raise UsageError(f"{where} {item!r} is not NAME=VALUE")
        if name not in cls.field_names():
            raise UsageError(f"{where} {item}: this engine's layout has no {name!r} "
                             f"(its fields: {', '.join(cls.field_names())})")
        kind = next(field_.type for field_ in fields(cls) if field_.name == name)
        if kind in ("bool", bool):
            if text.lower() not in ("true", "false"):
                raise UsageError(f"{where} {item}: {name} is a switch: true or false")
            return name, text.lower() == "true"
        if kind in ("str", str):
            return name, text
        if not text.strip().isdigit():
            raise UsageError(f"{where} {item}: {name} must be a whole number >= 1")
        return name, int(text)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.field_names()}

    def _shown(self) -> list[tuple[str, int | bool | str]]:
        """The first width always, the other widths unless 1, switches when on."""
        names = self.field_names()
        values = [(name, getattr(self, name)) for name in names]
        return values[:1] + [(name, value) for name, value in values[1:] if value is not False
                             and (value is True or value != 1)]

    def slug(self) -> str:
        """Short name for folders and scenario labels: ``tp4-ep2``."""
        return "-".join(name.replace("_", "") + ("" if value is True else str(value)) for name, value in self._shown())

    def flags(self) -> str:
        """The command-line flags that give this layout: ``--tp 4 --ep 2`` (``--layout rings=2`` for a field
        without a flag of its own)."""
        return " ".join(self._flag_text(name, value) for name, value in self._shown())

    def _flag_text(self, name: str, value: int | bool | str) -> str:
        if not self.has_own_flag(name):
            return f"{LAYOUT_OPTION} {name}={str(value).lower() if isinstance(value, bool) else value}"
        return self.flag_of(name) + ("" if value is True else f" {value}")


@dataclass(frozen=True)
class GroupPlan:
    """One group coordinator: its rank lists, or the group it is the same object as."""

    name: str
    rank_lists: tuple[tuple[int, ...], ...]
    alias_of: str | None = None

    @property
    def width(self) -> int:
        return len(self.rank_lists[0])

    @property
    def is_alias(self) -> bool:
        return self.alias_of is not None

    @property
    def builds_nothing(self) -> bool:
        """An alias or a width-1 group builds no communicator (every engine guards on world_size > 1)."""
        return self.is_alias or self.width == 1

    @property
    def new_group_calls(self) -> int:
        """``new_group`` calls every rank makes for this group (NCCL + gloo per list)."""
        return 0 if self.is_alias else 2 * len(self.rank_lists)

    def ranks_of(self, rank: int) -> tuple[int, ...]:
        """The rank list that contains ``rank`` (the pair the engine keeps)."""
        for ranks in self.rank_lists:
            if rank in ranks:
                return ranks
        raise KeyError(f"rank {rank} is in no list of group {self.name}")


@dataclass(frozen=True)
class Plan:
    layout: LayoutBase
    groups: tuple[GroupPlan, ...] = field(default_factory=tuple)

    def group(self, name: str) -> GroupPlan:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def built_groups(self) -> Iterator[GroupPlan]:
        """Groups that create process groups of their own (aliases excluded)."""
        return (group for group in self.groups if not group.is_alias)


# ------------------------------------------------------------------------------------------------- engine


class Engine:
    """What an engine provides. One instance per engine, registered in :mod:`memprobe.engines`; subclasses set the
    class attributes and implement :meth:`plan` and :meth:`decide` (and :meth:`sizes` for kinds that are not NCCL)."""

    name: ClassVar[str]  # "sglang": the folder under memprobe/engines/
    #: The names ``--engine`` takes for it and the mode each runs in, as records keep them.
    names: ClassVar[Mapping[str, Mode]]
    #: Other spellings -> one of :attr:`names` (``sglang-ref`` -> ``memprobe``).
    aliases: ClassVar[Mapping[str, str]] = {}
    label: ClassVar[str]  # "SGLang": how messages and tables name it
    #: the release memprobe's reference reproduces, as verdicts name it ("SGLang 0.5.23")
    reference_release: ClassVar[str] = ""
    layout_type: ClassVar[type[LayoutBase]]
    group_order: ClassVar[tuple[str, ...]]  # creation order, the world first
    kinds: ClassVar[tuple[Kind, ...]]
    env_presets: ClassVar[Mapping[str, Mapping[str, str]]] = {}

    @property
    def default_env_preset(self) -> str:
        """The preset of a scenario that names none: the engine's own first one, else ``none`` (NCCL's defaults)."""
        return next(iter(self.env_presets), "none")

    env_prefixes: ClassVar[tuple[str, ...]] = ()  # the engine's own variables, recorded beside NCCL's
    #: Groups the reports single out (their own table and headline), e.g. SGLang's MoE groups.
    highlighted_groups: ClassVar[tuple[str, ...]] = ()
    #: The (full, lean) stack pair a comparison reports a saving between, when it has both.
    stack_pair: ClassVar[tuple[str, str] | None] = None
    #: Groups whose init columns a comparison's table leaves out first when it is wider than the terminal, in that
    #: order (None: :meth:`narrow_table_drops` derives them).
    narrow_table_groups: ClassVar[tuple[str, ...] | None] = None
    #: Highlighted groups whose first-use columns their own table gives up first when too wide, in that order.
    narrow_highlighted_groups: ClassVar[tuple[str, ...]] = ()
    #: "module:attribute" of the worker-side builder per mode (imported in the rank: torch lives there).
    builders: ClassVar[Mapping[str, str]] = {}
    #: Why a width-1 group builds nothing, in the engine's words (recorded per rank).
    width_1_reason: ClassVar[str] = "builds none"
    #: Whether the installed mode can build a stack other than the engine's own (SGLang's forces its flags on the
    #: groups; an engine without it runs only stack ``installed``, and a scenario asking for another is refused).
    installed_takes_stacks: ClassVar[bool] = True
    #: (NCCL release, why) that the reference release's own dependency pins bring, for an estimate on a machine whose
    #: torch brings no NCCL (a CPU-only torch): an engine whose decisions depend on the NCCL release names it.
    pinned_nccl: ClassVar[tuple[str, str] | None] = None

    # -- layout and plan
    def plan(self, layout: LayoutBase) -> Plan:
        """The groups the engine's default stack builds for ``layout``."""
        raise NotImplementedError

    def plan_for(self, layout: LayoutBase, stack: Any) -> Plan:
        """The groups ``stack`` builds for ``layout``: where a stack stands for a release whose groups differ
        (vLLM 0.11 builds EP for dense models too), the engine plans that release's; the same as :meth:`plan` by
        default. Raises :class:`UsageError` where :meth:`stack_problem` names one."""
        problem = self.stack_problem(layout, stack)
        if problem is not None:
            raise UsageError(problem)
        return self.plan(layout)

    def stack_problem(self, layout: LayoutBase, stack: Any) -> str | None:
        """Why ``stack`` cannot build ``layout`` (one line naming the release that lacks a flag: exit 2), or None."""
        return None

    def layout(self, widths: Mapping[str, Any], where: str = "", given_as: str = "") -> LayoutBase:
        """The engine's layout from widths named as its fields; a width it does not have is refused unless 1, naming
        the engine as ``--engine`` gave it (``given_as``: ``vllm-ref`` rather than the family's ``vllm``)."""
        names = self.layout_type.field_names()
        foreign = sorted(name for name, value in widths.items() if name not in names and value is not None
                         and (isinstance(value, bool) or value != 1))
        if foreign:
            raise UsageError(f"{where}{'--' + foreign[0].replace('_', '-')} is not a flag of engine "
                             f"{given_as or self.name} "
                             f"(its widths: {', '.join(self.layout_type.flag_of(n) for n in names)})")
        return self.layout_type(**{name: value for name, value in widths.items() if name in names and value is not None})

    def name_for(self, mode: Mode) -> str | None:
        """The name records keep for this engine in ``mode`` (None: it has no such mode)."""
        return next((name for name, given in self.names.items() if given == mode), None)

    def describe_layout(self, layout: LayoutBase) -> str:
        """What ``memprobe plan`` says of a layout beside its flags."""
        return f"world size {layout.world_size}"

    def no_highlighted_groups_hint(self, layout: LayoutBase) -> str:
        """Why ``layout`` builds none of :attr:`highlighted_groups` where the user may expect some (a flag that
        needs another to take effect), as a short clause for the reports; "" where nothing needs saying."""
        return ""

    def headline_layouts(self, widths: Mapping[str, int | None], baseline_first: int | None = None
                         ) -> tuple[LayoutBase | None, LayoutBase]:
        """``compare``'s and ``estimate``'s layouts from the flags: a reference layout to measure the others
        against (None: the first stack is the baseline) and the layout compared across stacks."""
        return None, self.layout(widths)

    def narrow_table_drops(self) -> tuple[str, ...]:
        """The groups whose init columns a too-wide comparison table gives up first: :attr:`narrow_table_groups`,
        or the groups in reverse creation order but the world, the first group after it (the widest, the one a
        reader looks for) and the highlighted groups (they have a table of their own)."""
        if self.narrow_table_groups is not None:
            return self.narrow_table_groups
        kept = {WORLD, *self.group_order[1:2], *self.highlighted_groups}
        return tuple(name for name in reversed(self.group_order) if name not in kept)

    def kind(self, name: str) -> Kind:
        for kind in self.kinds:
            if kind.name == name:
                return kind
        raise KeyError(f"engine {self.name} has no communicator kind {name!r}")

    @property
    def kind_names(self) -> tuple[str, ...]:
        return tuple(kind.name for kind in self.kinds)

    # -- stacks
    default_stack: ClassVar[str]
    #: The engine's own stack settings (recorded beside the groups' flags), e.g. ``custom_allreduce_impl``.
    stack_option_names: ClassVar[tuple[str, ...]] = ()

    def stacks(self) -> Mapping[str, Any]:
        """Built-in stacks by name (a :class:`memprobe.engines.stacks.Stack` each)."""
        raise NotImplementedError

    @property
    def builtin_stack_names(self) -> tuple[str, ...]:
        """Every name a built-in stack answers to (a stack file may take none of them)."""
        return tuple(self.stacks())

    @property
    def builtin_stacks_text(self) -> str:
        return ", ".join(self.builtin_stack_names)

    @property
    def stack_hint(self) -> str:
        return " or ".join(self.builtin_stack_names[:2])

    def builtin_stack(self, spec: str, option: str) -> Any:
        """The built-in stack ``spec`` names, or None."""
        return self.stacks().get(spec)

    def resolve_stack(self, spec: str, option: str = "--stack") -> Any:
        """A built-in stack by name, or a TOML stack file checked against this engine's groups and kinds."""
        return resolve_stack(self, spec, option)

    def stack_options(self, options: Mapping[str, Any], where: str, recorded: bool = False) -> dict[str, str]:
        """A stack's engine-specific settings (checked; :class:`UsageError` naming ``where``); ``recorded``: read
        back from a record rather than a stack file."""
        if options:
            raise UsageError(f"{where}: engine {self.name} has no stack setting(s) {sorted(options)}")
        return {}

    # -- communicators
    def decide(self, group: GroupPlan, stack: Any, facts: Facts) -> list[Decision]:
        """Per kind, what ``group`` builds for ``stack`` on ``facts`` (pure: the worker, the estimate and the
        reports call it alike). The common guards come first: see :meth:`guard`."""
        raise NotImplementedError

    def guard(self, group: GroupPlan, kind: str, wanted: bool, facts: Facts) -> Decision | None:
        """The decision every engine shares before its own rule: off, alias, width 1, no device; None: go on."""
        if not wanted:
            return Decision(group.name, kind, Verdict.OFF, reason="not in stack")
        if group.is_alias:
            return Decision(group.name, kind, Verdict.ALIAS, reason=str(group.alias_of))
        if facts.width == 1:
            return Decision(group.name, kind, Verdict.WIDTH_1, reason=self.width_1_reason)
        if facts.device == "cpu" and kind in self.gpu_kinds:
            return Decision(group.name, kind, Verdict.NO_DEVICE, reason="--device cpu has no GPU communicators")
        return None

    def estimate_notes(self, stack: Any, nccl: str) -> list[str]:
        """What an estimate with NCCL release ``nccl`` should say of the engine's own decisions under ``stack`` (one
        line each; an estimate's table, export and gate verdict repeat them)."""
        return []

    def own_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The engine's own variables (:attr:`env_prefixes`) of an environment: what its rules may read (Facts.env)."""
        return {key: value for key, value in sorted(environ.items()) if key.startswith(self.env_prefixes)}

    @property
    def gpu_kinds(self) -> tuple[str, ...]:
        """Kinds that need a GPU (all but host-memory ones); ``--device cpu`` skips them."""
        return self.kind_names

    def sizes(self, decision: Decision, facts: Facts) -> list[Allocation]:
        """What a built communicator of a kind that is not NCCL allocates."""
        raise NotImplementedError(f"engine {self.name} gives no sizes for {decision.kind}")

    # -- installed engines
    def mode_problem(self, mode: Mode) -> str | None:
        """Why ``--engine`` cannot run this engine in ``mode`` here (one line: exit 2), or None."""
        return None

    def installation(self, environ: Mapping[str, str], site: str = "") -> EngineInstallation | None:
        """The installed engine the workers will import (read from its sources, never imported; :class:`UsageError`
        with the pip line that fixes it where it is missing or broken): what run.json records under
        ``environment[<engine name>]``; None for an engine with no installed mode."""
        return None

    def installed_version(self, site: str) -> str:
        """The release of the installed engine the workers would import from ``site`` ("" for the importable one),
        read from its sources (:meth:`installation`); "?" where none is found."""
        import os

        from memprobe.engines.sites import site_first

        try:
            found = self.installation(site_first(dict(os.environ), site))
        except UsageError:
            return "?"
        return found.version if found else "?"

    def cpu_requirements_problem(self, environ: Mapping[str, str], installation: EngineInstallation | None
                                 ) -> str | None:
        """What the installed engine's group code needs on a CPU runner and does not find there (one line, with the
        pip line that installs it), or None."""
        return None

    def check_site(self, site: str, given_as: str) -> str:
        raise UsageError(f"{given_as}: engine {self.name} takes no site folder")

    def learn_stack(self, cpu_run: Any) -> Any:
        """From a CPU run of the installed engine: the stack it asked for (what the estimate then builds)."""
        raise UsageError(f"engine {self.name} cannot learn its flags from a CPU run")

    # -- reports
    def release_partners(self, item: Any, references: list[Any]) -> list[Any]:
        """For an installed engine's run with its own flags (stack ``installed``): the reference scenarios of
        ``references`` that build what it built, best first (the fidelity report pairs it with the first)."""
        return []

    def built_by_run(self, run: Any) -> dict[str, dict[str, bool]]:
        """Per group, the kinds an installed-engine run built on any rank (its recorded decisions)."""
        return {}


@dataclass(frozen=True)
class EngineRef:
    """An engine in one mode, as ``--engine`` names it: ``name`` is what records keep (``memprobe`` for the
    reference of SGLang, as every record of an earlier memprobe says)."""

    name: str
    engine: Engine
    mode: Mode

    @property
    def installed(self) -> bool:
        return self.mode == INSTALLED

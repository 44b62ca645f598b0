"""Which communicators each group gets: the full (pre-fix) and lean (SGLang 0.5.23) stacks.

A stack names, per group, whether SGLang would build a ``pynccl`` communicator
and a custom all-reduce for it. Defaults follow ``init_model_parallel_group``
calls in SGLang 0.5.23 (research notes section 2.2). The only difference between
``full`` and ``lean`` is sglang PR #22515: ``moe_ep`` and ``moe_tp`` pass
``use_pynccl=False, use_custom_allreduce=False``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memprobe.errors import UsageError
from memprobe.model.layout import GROUP_ORDER, GroupPlan
from memprobe.model.steps import COMMUNICATOR_STEPS

COMMUNICATORS: tuple[str, ...] = COMMUNICATOR_STEPS  # a stack's flags are named after the steps that build them
CUSTOM_ALLREDUCE_IMPLEMENTATIONS: tuple[str, ...] = ("v2", "v1")


@dataclass(frozen=True)
class GroupFlags:
    pynccl: bool = False
    custom_allreduce: bool = False

    def as_dict(self) -> dict[str, bool]:
        return {"pynccl": self.pynccl, "custom_allreduce": self.custom_allreduce}


# SGLang 0.5.23 defaults with the global switches at their defaults
# (custom all-reduce on, SYNC_TOKEN_IDS_ACROSS_TP off, symm-mem off).
_LEAN_FLAGS: dict[str, GroupFlags] = {
    "world": GroupFlags(pynccl=False, custom_allreduce=False),  # PS:2147-2155
    "tp": GroupFlags(pynccl=True, custom_allreduce=True),
    "attn_cp": GroupFlags(pynccl=True, custom_allreduce=True),
    "attention_tp": GroupFlags(pynccl=False, custom_allreduce=True),  # pynccl only with SYNC_TOKEN_IDS_ACROSS_TP
    "moe_dp": GroupFlags(pynccl=True, custom_allreduce=True),
    "moe_ep": GroupFlags(pynccl=False, custom_allreduce=False),  # sglang PR #22515
    "moe_tp": GroupFlags(pynccl=False, custom_allreduce=False),  # sglang PR #22515
    "pp": GroupFlags(pynccl=True, custom_allreduce=False),
    "self_pp": GroupFlags(pynccl=True, custom_allreduce=False),  # moot: width 1
}


@dataclass(frozen=True)
class Stack:
    """Communicator flags per group name, plus the custom all-reduce layout to allocate."""

    name: str
    flags: dict[str, GroupFlags] = field(default_factory=dict)
    custom_allreduce_impl: str = "v2"
    description: str = ""
    source: str = ""  # the TOML file it came from; "" for the built-ins

    def flags_for(self, group: str) -> GroupFlags:
        return self.flags.get(group, GroupFlags())

    def communicators_for(self, group: GroupPlan) -> dict[str, bool]:
        """What the group builds: nothing for aliases and width-1 groups (SGLang guards on world_size > 1)."""
        if group.is_alias or group.width == 1:
            return {name: False for name in COMMUNICATORS}
        return self.flags_for(group.name).as_dict()

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "custom_allreduce_impl": self.custom_allreduce_impl,
            "groups": {name: self.flags[name].as_dict() for name in GROUP_ORDER if name in self.flags},
            "source": self.source,
        }

    def identity(self) -> dict[str, Any]:
        """What the stack builds, for a scenario's identity: the flags of every group and the custom
        all-reduce layout; not its name or file, so a file cannot pass for a built-in."""
        return {"custom_allreduce_impl": self.custom_allreduce_impl,
                "groups": {name: self.flags[name].as_dict() for name in GROUP_ORDER if name in self.flags}}


LEAN = Stack(
    name="lean",
    flags=dict(_LEAN_FLAGS),
    description="SGLang 0.5.23 (after PR #22515): moe_ep and moe_tp get torch's NCCL and gloo groups only",
)
FULL = Stack(
    name="full",
    flags={
        **_LEAN_FLAGS,
        "moe_ep": GroupFlags(pynccl=True, custom_allreduce=True),
        "moe_tp": GroupFlags(pynccl=True, custom_allreduce=True),
    },
    description="SGLang before PR #22515: moe_ep and moe_tp also get pynccl and custom all-reduce",
)
INSTALLED = Stack(
    name="installed",
    description="--engine sglang only: SGLang's own flags, as the installed release passes them; memprobe forces none",
)
BUILTIN_STACKS: dict[str, Stack] = {"full": FULL, "lean": LEAN, "installed": INSTALLED}
BUILTIN_NAMES = ("full", "lean", "full:v1", "lean:v1", "full:v2", "lean:v2", "installed")


def stack_from_record(document: dict[str, Any], where: str) -> Stack:
    """The stack a run or baseline recorded (:meth:`Stack.as_dict`), rebuilt without reading any file."""
    try:
        flags = {name: GroupFlags(**value) for name, value in document["groups"].items()}
        stack = Stack(name=str(document["name"]), flags=flags, custom_allreduce_impl=str(document["custom_allreduce_impl"]),
                      source=str(document.get("source", "")))
    except (KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"{where}: the stack is not a recorded stack (name, custom_allreduce_impl, groups): {error}") from None
    if stack.custom_allreduce_impl not in CUSTOM_ALLREDUCE_IMPLEMENTATIONS:
        raise UsageError(f"{where}: custom_allreduce_impl {stack.custom_allreduce_impl!r} is not one of "
                         f"{list(CUSTOM_ALLREDUCE_IMPLEMENTATIONS)}")
    return stack


def _parse_stack_document(document: dict, source: str) -> Stack:
    allowed = {"name", "description", "base", "custom_allreduce_impl", "groups"}
    unknown = set(document) - allowed
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if not {"base", "groups", "custom_allreduce_impl"} & set(document):
        # an empty (or name-only) file would silently be the lean stack
        raise UsageError(f"{source}: sets neither base, custom_allreduce_impl nor [groups.*]; "
                         'write base = "lean" (or "full") to mean a built-in stack')
    base_name = document.get("base", "lean")
    if not isinstance(base_name, str) or base_name not in BUILTIN_STACKS:
        raise UsageError(f"{source}: base = {base_name!r} is not a built-in stack; use one of {sorted(BUILTIN_STACKS)}")
    base = BUILTIN_STACKS[base_name]
    flags = dict(base.flags)
    groups = document.get("groups", {})
    if not isinstance(groups, dict):
        raise UsageError(f"{source}: [groups] must be a table of group names")
    for group_name, settings in groups.items():
        if group_name not in GROUP_ORDER:
            raise UsageError(f"{source}: unknown group {group_name!r}; groups are {', '.join(GROUP_ORDER)}")
        if not isinstance(settings, dict):
            raise UsageError(f"{source}: [groups.{group_name}] must be a table")
        bad = set(settings) - set(COMMUNICATORS)
        if bad:
            raise UsageError(f"{source}: [groups.{group_name}] unknown communicator(s) {sorted(bad)}; use {list(COMMUNICATORS)}")
        for key, value in settings.items():
            if not isinstance(value, bool):
                raise UsageError(f"{source}: groups.{group_name}.{key} must be true or false, got {value!r}")
        flags[group_name] = replace(flags.get(group_name, GroupFlags()), **settings)
    impl = document.get("custom_allreduce_impl", base.custom_allreduce_impl)
    if impl not in CUSTOM_ALLREDUCE_IMPLEMENTATIONS:
        raise UsageError(f"{source}: custom_allreduce_impl must be one of {list(CUSTOM_ALLREDUCE_IMPLEMENTATIONS)}, got {impl!r}")
    name = document.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise UsageError(f"{source}: name must be a non-empty string")
    if name in BUILTIN_NAMES:  # a file named "lean" with other flags would pass for the built-in lean
        raise UsageError(f"{source}: name {name!r} is the name of a built-in stack; give the file's stack a name of its own")
    return Stack(name=name, flags=flags, custom_allreduce_impl=impl, description=str(document.get("description", "")),
                 source=source)


def load_stack_file(path: str | Path) -> Stack:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read stack file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"stack file {path} is not UTF-8 text (byte {error.start})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"stack file {path} is not valid TOML: {error}") from None
    return _parse_stack_document(document, str(path))


BUILTIN_NAMES_TEXT = "full, lean, full:v1, lean:v1, full:v2, lean:v2, installed; v2 is the default"


def resolve_stack(spec: str, option: str = "--stack") -> Stack:
    """``full``, ``lean``, either with ``:v1`` (v1 custom all-reduce buffers) or ``:v2``, or a TOML path.
    ``option`` is how errors name where the value came from (``--stacks``, a scenario file)."""
    if not spec:
        raise UsageError(f"{option} must not be empty; use full, lean or a path to a stack TOML file")
    name, _, impl = spec.partition(":")
    if name in BUILTIN_STACKS and not Path(spec).exists():
        stack = BUILTIN_STACKS[name]
        if impl:
            if impl not in CUSTOM_ALLREDUCE_IMPLEMENTATIONS:
                raise UsageError(f"{option} {spec!r}: custom all-reduce layout must be v1 or v2")
            stack = replace(stack, name=f"{name}:{impl}" if impl != "v2" else name, custom_allreduce_impl=impl)
        return stack
    if spec.endswith(".toml") or Path(spec).exists():
        return load_stack_file(spec)
    raise UsageError(f"{option} {spec!r} is neither a built-in stack ({BUILTIN_NAMES_TEXT}) nor a TOML file")


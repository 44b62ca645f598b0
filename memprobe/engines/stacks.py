"""Stacks: which communicators each group of an engine builds (a flag per group and communicator kind), plus the
engine's own settings (SGLang's custom all-reduce layout). Built-in stacks come from the engine; a TOML stack file
names a built-in ``base`` and changes flags, checked against the engine's groups and kinds::

    name = "ep-pynccl-only"
    base = "lean"
    [groups.moe_ep]
    pynccl = true
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from memprobe.errors import UsageError

if TYPE_CHECKING:  # the engine hands its stacks its kinds and group order: no import of it at run time
    from memprobe.engines.api import Engine, GroupPlan

Flags = dict[str, bool]


@dataclass(frozen=True)
class Stack:
    """Communicator flags per group name, and the engine's own settings (``options``, e.g. the custom all-reduce
    layout), for the engine named ``engine``, whose kinds and group order it carries."""

    name: str
    engine: str
    kinds: tuple[str, ...]
    group_order: tuple[str, ...]
    flags: dict[str, Flags] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    description: str = ""
    source: str = ""  # the TOML file it came from; "" for the built-ins

    def option(self, name: str) -> str:
        return self.options[name]

    def flags_for(self, group: str) -> Flags:
        """Every kind of the engine: whether the stack asks ``group`` for it."""
        given = self.flags.get(group, {})
        return {kind: bool(given.get(kind, False)) for kind in self.kinds}

    def communicators_for(self, group: "GroupPlan") -> Flags:
        """What the group builds: nothing for an alias or a width-1 group (:attr:`GroupPlan.builds_nothing`)."""
        if group.builds_nothing:
            return {kind: False for kind in self.kinds}
        return self.flags_for(group.name)

    def _groups(self) -> dict[str, Flags]:
        return {name: self.flags_for(name) for name in self.group_order if name in self.flags}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options, "groups": self._groups(), "source": self.source}

    def identity(self) -> dict[str, Any]:
        """What the stack builds, for a scenario's identity: the flags of every group and the engine's settings;
        not its name or file, so a file cannot pass for a built-in."""
        return {**self.options, "groups": self._groups()}


def new_stack(engine: "Engine", name: str, flags: dict[str, Flags] | None = None, options: dict[str, str] | None = None,
              description: str = "", source: str = "") -> Stack:
    """A stack of ``engine`` (its kinds and group order filled in)."""
    return Stack(name=name, engine=engine.name, kinds=engine.kind_names, group_order=engine.group_order,
                 flags=dict(flags or {}), options=dict(options or {}), description=description, source=source)


def stack_from_record(engine: "Engine", document: Mapping[str, Any], where: str) -> Stack:
    """The stack a run or baseline recorded (:meth:`Stack.as_dict`), rebuilt without reading any file."""
    try:
        flags = {str(name): {str(k): bool(v) for k, v in dict(value).items()} for name, value in document["groups"].items()}
        options = {key: value for key, value in document.items() if key not in ("name", "groups", "source", "description")}
        stack = new_stack(engine, str(document["name"]), flags, engine.stack_options(options, where, recorded=True),
                          source=str(document.get("source", "")))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise UsageError(f"{where}: the stack is not a recorded stack (name, groups and the engine's settings): "
                         f"{error}") from None
    return stack


def _parse_stack_document(engine: "Engine", document: dict, source: str) -> Stack:
    builtins = engine.stacks()
    option_keys = set(engine.stack_option_names)
    allowed = {"name", "description", "base", "groups"} | option_keys
    unknown = set(document) - allowed
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if not ({"base", "groups"} | option_keys) & set(document):
        # an empty (or name-only) file would silently be the default stack
        raise UsageError(f"{source}: sets neither base, {', '.join(sorted(option_keys)) + ' ' if option_keys else ''}"
                         f"nor [groups.*]; write base = \"{engine.default_stack}\" to mean a built-in stack")
    base_name = document.get("base", engine.default_stack)
    if not isinstance(base_name, str) or base_name not in builtins:
        raise UsageError(f"{source}: base = {base_name!r} is not a built-in stack; use one of {sorted(builtins)}")
    base = builtins[base_name]
    flags = {name: dict(value) for name, value in base.flags.items()}
    groups = document.get("groups", {})
    if not isinstance(groups, dict):
        raise UsageError(f"{source}: [groups] must be a table of group names")
    for group_name, settings in groups.items():
        if group_name not in engine.group_order:
            raise UsageError(f"{source}: unknown group {group_name!r}; groups are {', '.join(engine.group_order)}")
        if not isinstance(settings, dict):
            raise UsageError(f"{source}: [groups.{group_name}] must be a table")
        bad = set(settings) - set(engine.kind_names)
        if bad:
            raise UsageError(f"{source}: [groups.{group_name}] unknown communicator(s) {sorted(bad)}; use {list(engine.kind_names)}")
        for key, value in settings.items():
            if not isinstance(value, bool):
                raise UsageError(f"{source}: groups.{group_name}.{key} must be true or false, got {value!r}")
        flags[group_name] = {**flags.get(group_name, {}), **settings}
    options = engine.stack_options({**base.options, **{k: document[k] for k in option_keys if k in document}}, source)
    name = document.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise UsageError(f"{source}: name must be a non-empty string")
    if name in engine.builtin_stack_names:  # a file named "lean" with other flags would pass for the built-in lean
        raise UsageError(f"{source}: name {name!r} is the name of a built-in stack; give the file's stack a name of its own")
    return new_stack(engine, name, flags, options, description=str(document.get("description", "")), source=source)


def load_stack_file(engine: "Engine", path: str | Path) -> Stack:
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
    return _parse_stack_document(engine, document, str(path))


def resolve_stack(engine: "Engine", spec: str, option: str = "--stack") -> Stack:
    """A built-in stack of ``engine`` (:meth:`Engine.builtin_stack`) or a TOML path. ``option`` is how errors name
    where the value came from (``--stacks``, a scenario file)."""
    if not spec:
        raise UsageError(f"{option} must not be empty; use {engine.stack_hint} or a path to a stack TOML file")
    if not Path(spec).exists():
        stack = engine.builtin_stack(spec, option)
        if stack is not None:
            return stack
    if spec.endswith(".toml") or Path(spec).exists():
        return load_stack_file(engine, spec)
    raise UsageError(f"{option} {spec!r} is neither a built-in stack of {engine.label} ({engine.builtin_stacks_text}) nor a TOML file")

"""The engines memprobe knows, by the names ``--engine`` takes.

    >>> from memprobe import engines
    >>> engines.get("sglang-ref").engine.group_order[:2]
    ('world', 'tp')

An engine is a folder ``memprobe/engines/<name>/`` whose ``__init__`` holds ``ENGINE`` (an
:class:`memprobe.engines.api.Engine`); it is registered by one line: an entry of :data:`BUILTIN` below, an entry
point of group ``memprobe.engines`` (``vllm = "memprobe.engines.vllm:ENGINE"``), or, for a test's engine,
``MEMPROBE_ENGINES=module:ATTRIBUTE[,...]`` in the environment (the workers inherit it). Each engine lists the
names it answers to (:attr:`Engine.names`, name -> mode) and their older spellings (:attr:`Engine.aliases`).
"""

from __future__ import annotations

import functools
import importlib
import os
from importlib import metadata
from typing import Iterable

from memprobe.engines.api import Engine, EngineRef
from memprobe.errors import UsageError

#: The built-in engines, one line each.
BUILTIN: tuple[str, ...] = (
    "memprobe.engines.sglang:ENGINE",
    "memprobe.engines.vllm:ENGINE",
)
ENTRY_POINT_GROUP = "memprobe.engines"
ENVIRONMENT_VARIABLE = "MEMPROBE_ENGINES"

_loaded: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    """Add ``engine`` under the names it declares (a name already taken by another engine is an error)."""
    for name in (*engine.names, *engine.aliases):
        known = _by_name().get(name)
        if known is not None and known.engine is not engine:
            raise UsageError(f"engine name {name!r} is taken by engine {known.engine.name}")
    _loaded[engine.name] = engine
    return engine


def _load(spec: str) -> Engine:
    module, _, attribute = spec.partition(":")
    try:
        engine = getattr(importlib.import_module(module), attribute or "ENGINE")
    except (ImportError, AttributeError) as error:
        raise UsageError(f"cannot load engine {spec!r}: {error}") from None
    if not isinstance(engine, Engine):
        raise UsageError(f"engine {spec!r} is not a memprobe.engines.api.Engine")
    return engine


def _specs() -> Iterable[str]:
    yield from BUILTIN
    yield from _entry_point_specs()
    yield from (item for item in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",") if item)


@functools.lru_cache(maxsize=1)
def _entry_point_specs() -> tuple[str, ...]:
    """The engines installed packages declare, read once: ``entry_points`` reads every installed distribution's
    metadata on each call, and a report of thousands of ranks asks for the engines hundreds of times."""
    try:
        return tuple(f"{point.value}" for point in metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # broken package metadata must not stop the built-ins
        return ()


def all_engines() -> tuple[Engine, ...]:
    """Every registered engine (built-ins, entry points, ``MEMPROBE_ENGINES``), each once."""
    for spec in _specs():
        engine = _load(spec)
        if engine.name not in _loaded:
            register(engine)
    return tuple(_loaded.values())


def builtin_engines() -> tuple[Engine, ...]:
    """The engines memprobe ships (:data:`BUILTIN`), without plug-ins: the command line declares its layout options
    from their layouts (a plug-in's own widths are given as ``--layout NAME=VALUE``)."""
    return tuple(_load(spec) for spec in BUILTIN)


def _by_name() -> dict[str, EngineRef]:
    refs: dict[str, EngineRef] = {}
    for engine in _loaded.values():
        for name, mode in engine.names.items():
            refs[name] = EngineRef(name=name, engine=engine, mode=mode)
        for alias, name in engine.aliases.items():
            refs[alias] = EngineRef(name=name, engine=engine, mode=engine.names[name])
    return refs


def names() -> tuple[str, ...]:
    """The names ``--engine`` takes, each engine's canonical ones first, then their aliases."""
    engines = all_engines()
    return (*(name for engine in engines for name in engine.aliases),
            *(name for engine in engines for name in engine.names))


def get(name: str, where: str = "--engine") -> EngineRef:
    """The engine and mode ``name`` stands for; ``ref.name`` is what a record keeps (an alias resolves to it)."""
    all_engines()
    ref = _by_name().get(name)
    if ref is None:
        raise UsageError(f"{where}: unknown engine {name!r}; known: {', '.join(names())}")
    problem = ref.engine.mode_problem(ref.mode)
    if problem:
        raise UsageError(problem)
    return ref


def engine(name: str) -> Engine:
    """The engine whose :attr:`Engine.name` is ``name`` (``sglang``), whatever its mode."""
    for candidate in all_engines():
        if candidate.name == name:
            return candidate
    raise UsageError(f"unknown engine {name!r}; known: {', '.join(e.name for e in all_engines())}")


def stored_name(name: str) -> str:
    """What a record keeps for the engine ``--engine name`` names."""
    return get(name).name


def kinds_of_every_engine() -> frozenset[str]:
    """Every communicator kind of every registered engine (the step names a readings file may hold)."""
    return frozenset(kind.name for engine in all_engines() for kind in engine.kinds)


def of_runs(record_names: Iterable[str]) -> tuple[Engine, ...]:
    """The engines of runs recorded with these names, each once, in the order given (unknown names skipped: a
    report shows what it can of a foreign record)."""
    found: list[Engine] = []
    all_engines()
    refs = _by_name()
    for name in record_names:
        ref = refs.get(name)
        if ref is not None and ref.engine not in found:
            found.append(ref.engine)
    return tuple(found)


def group_order(record_names: Iterable[str]) -> tuple[str, ...]:
    """The creation order of these runs' engines' groups, one after the other."""
    return tuple(dict.fromkeys(name for engine in of_runs(record_names) for name in engine.group_order))


def highlighted_groups(record_names: Iterable[str]) -> tuple[str, ...]:
    """The groups these runs' engines single out in reports (SGLang's MoE groups)."""
    return tuple(dict.fromkeys(name for engine in of_runs(record_names) for name in engine.highlighted_groups))


def narrow_table_drops(record_names: Iterable[str]) -> tuple[str, ...]:
    """The groups whose columns these runs' engines give up first in a too-wide table, each engine's in turn."""
    return tuple(dict.fromkeys(name for engine in of_runs(record_names) for name in engine.narrow_table_drops()))


def narrow_highlighted_drops(record_names: Iterable[str]) -> tuple[str, ...]:
    """The highlighted groups whose first-use columns these runs' engines give up first in a too-wide table."""
    return tuple(dict.fromkeys(name for engine in of_runs(record_names) for name in engine.narrow_highlighted_groups))


def kinds(record_names: Iterable[str]) -> tuple:
    """The communicator kinds of these runs' engines, in their order."""
    return tuple({kind.name: kind for engine in of_runs(record_names) for kind in engine.kinds}.values())


def kind_label(name: str) -> str:
    """How tables name a communicator kind of any registered engine (the kind's name when none has it)."""
    for engine in all_engines():
        for kind in engine.kinds:
            if kind.name == name:
                return kind.label
    return name

"""Stand-ins for the modules an installed engine's import chain names but a CPU runner lacks (engine-neutral).

An engine's ``parallel_state`` (SGLang's, vLLM's) sits at the end of a long import chain: utility modules import
``orjson``, ``zmq``, ``triton``, ``sgl_kernel``... at module level, although building the process groups on CPU
calls none of them. Those packages are either GPU-only (``sgl_kernel``, ``triton`` kernels, ``tvm_ffi`` JIT) or
come with the engine's full dependency set, which pins a CUDA torch. So that ``pip install --no-deps ENGINE`` is
enough on a CPU runner, each engine lists the top-level modules its chain was checked to need
(``memprobe/engines/<engine>/standins.py``) and :func:`install` makes exactly those importable as *hollow*
modules, and only where the real one cannot be found: the finder sits at the end of ``sys.meta_path``, so an
installed module always wins, and a module not on the list still fails to import as before.

A hollow module's attributes are placeholders: usable where a module body uses them (as a decorator, a base
class, a type annotation, a default value), returning more placeholders when called. Where the group-building
path really computes with one, the run shows it (a placeholder is never a number, so a size or a flag built
from one fails loudly). Only ever installed in ``--device cpu`` workers and the parent's import check, never on
a GPU, where a placeholder could silently turn off a communicator that the real package would build.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any, Iterable, Sequence

STOOD_IN_ATTRIBUTE = "__memprobe_standin__"
#: what patching code reads off a method it wraps (SGLang 0.5.11: PretrainedConfig.from_dict.__func__)
FUNCTION_DUNDERS = frozenset({"__func__", "__wrapped__"})


class HollowBase:
    """What a class deriving from a placeholder derives from: takes any class keywords and any arguments."""

    def __init_subclass__(cls, **keywords: Any) -> None:  # msgspec.Struct subclasses pass frozen=, kw_only=
        super().__init_subclass__()

    def __init__(self, *args: Any, **keywords: Any) -> None:
        self.__dict__.update(keywords)

    def __class_getitem__(cls, key: Any) -> type:  # annotations on a subclass: LRUCache[str, V] (vLLM 0.33.0)
        return cls


class Placeholder:
    """Any attribute of a hollow module (and of a placeholder): named after the path that reached it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> "Placeholder":
        if attribute.startswith("__") and attribute.endswith("__") and attribute not in FUNCTION_DUNDERS:
            raise AttributeError(attribute)
        return Placeholder(f"{self._name}.{attribute}")

    def __call__(self, *args: Any, **keywords: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not keywords:  # used as a bare decorator: @triton.jit
            return args[0]
        return Placeholder(f"{self._name}()")

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (HollowBase,)

    def __getitem__(self, key: Any) -> "Placeholder":  # annotations: Foo[int]
        return Placeholder(f"{self._name}[]")

    def __setitem__(self, key: Any, value: Any) -> None:  # registries: CONFIG_MAPPING._extra_content[...] = ...
        pass

    def __or__(self, other: Any) -> "Placeholder":  # annotations: Foo | None
        return self

    __ror__ = __or__

    def __iter__(self) -> Any:
        return iter(())

    def __repr__(self) -> str:
        return f"<memprobe stand-in {self._name}>"

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        # a field typed with a stood-in class (vLLM 0.33.0's chat_message.py builds a TypeAdapter over openai's
        # types at import): accept anything, as no value ever reaches it while groups are built
        from pydantic_core import core_schema

        return core_schema.any_schema()


class _HollowLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        name = module.__name__
        module.__path__ = []  # a package: its submodules are hollow too
        setattr(module, STOOD_IN_ATTRIBUTE, True)

        def __getattr__(attribute: str) -> Placeholder:
            if attribute.startswith("__") and attribute.endswith("__"):
                raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
            return Placeholder(f"{name}.{attribute}")

        module.__getattr__ = __getattr__


class HollowFinder(importlib.abc.MetaPathFinder):
    """Finds the listed top-level modules (and their submodules) when no other finder does."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self.used: list[str] = []  # top-level names actually stood in, in import order

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        top, _, rest = fullname.partition(".")
        if top not in self.names:
            return None
        if rest and not getattr(sys.modules.get(top), STOOD_IN_ATTRIBUTE, False):
            # a name a real, installed package lacks stays its ImportError: a circular ``from regex import X``
            # falls back to importing ``regex.X`` as a submodule, and a hollow one broke regex's own import
            return None
        if top not in self.used:
            self.used.append(top)
        return importlib.machinery.ModuleSpec(fullname, _HollowLoader(), is_package=True)


def install(names: Sequence[str]) -> HollowFinder:
    """Stand in for ``names`` wherever they are not installed (idempotent: one finder per process)."""
    for finder in sys.meta_path:
        if isinstance(finder, HollowFinder):
            finder.names = finder.names | frozenset(names)
            return finder
    finder = HollowFinder(names)
    sys.meta_path.append(finder)  # last: every real finder is asked first
    return finder


def stood_in() -> list[str]:
    """The top-level modules this process imported as stand-ins, sorted: the order they were first imported in
    follows the engine's import chain, which differs between ranks and runs (so would every note naming them)."""
    return sorted({name for finder in sys.meta_path if isinstance(finder, HollowFinder) for name in finder.used})


__all__ = ["HollowBase", "HollowFinder", "Placeholder", "install", "stood_in"]

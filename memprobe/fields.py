"""Options dataclasses checked against their own annotations when they are made, so that a value of the wrong type
from Python code (``out_dir=5``, ``stacks=None``, ``gpus_per_node="8"``) is one :class:`OptionTypeError` line naming
the field, not an AttributeError or TypeError deep inside a launch. The command line builds the same values and
never trips these checks.

What each annotation accepts (anything else is refused):

- ``Path``: a ``str`` or an ``os.PathLike``, stored as a ``Path``; ``PathText`` (a ``str`` that names a folder): the
  same, stored as text;
- ``int``: an int, never a bool; ``float``: an int or a float, never a bool; ``str``, ``bool``: that type only;
- ``tuple[str, ...]``: a list or tuple of str, stored as a tuple; a single ``str`` is that one item
  (``scenarios="tp8-ep4-lean"`` means one scenario, never the string's characters);
- ``Optional[X]``: None as well; None is refused wherever the annotation does not say Optional;
- any other class: an instance of it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Mapping, Union

from memprobe.errors import OptionTypeError

#: A path the options keep as text (an SGLang site folder, handed on in PYTHONPATH): a str or os.PathLike is accepted.
PathText = Annotated[str, "path kept as text"]

_HINTS: dict[type, dict[str, Any]] = {}


class _Refused(Exception):
    """The value does not fit the annotation; ``args[0]`` says what would."""


def check_fields(instance: Any, names: Mapping[str, Any] | None = None) -> None:
    """Check (and normalise: paths to Path, lists to tuples) every field of a dataclass ``instance``; frozen ones
    too. ``names``: what the annotations name but their module imports only for type checkers."""
    kind = type(instance)
    hints = _HINTS.get(kind)
    if hints is None:
        hints = _HINTS[kind] = typing.get_type_hints(kind, localns=dict(names or {}), include_extras=True)
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        try:
            checked = _fit(value, hints[field.name])
        except _Refused as refused:
            raise OptionTypeError(f"{kind.__name__}: {field.name} must be {refused.args[0]}, "
                                  f"got {_shown(value)}") from None
        if checked is not value:
            object.__setattr__(instance, field.name, checked)


def as_path(value: Any, what: str) -> Path:
    """``value`` (a str or os.PathLike) as a Path; anything else an OptionTypeError naming ``what``."""
    try:
        path: Path = _fit(value, Path)
        return path
    except _Refused as refused:
        raise OptionTypeError(f"{what} must be {refused.args[0]}, got {_shown(value)}") from None


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _fit(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` asks for, or _Refused with what it asks for."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        if hint == PathText:  # kept as given: Path("") would be "."
            return value if isinstance(value, str) else os.fspath(_fit(value, Path))
        return _fit(value, typing.get_args(hint)[0])
    if origin in (Union, types.UnionType):
        return _fit_union(value, typing.get_args(hint))
    if origin is tuple:
        return _fit_tuple(value, typing.get_args(hint))
    if hint is Any:
        return value
    if hint is Path:
        if isinstance(value, (str, os.PathLike)) and isinstance(os.fspath(value), str):
            return value if isinstance(value, Path) else Path(value)
        raise _Refused("a path (a str or an os.PathLike)")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float) if hint is float else int):
            raise _Refused("an int" if hint is int else "a number")
        return value
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise _Refused(f"a {hint.__name__}")
        return value
    raise TypeError(f"check_fields cannot check the annotation {hint!r}")  # memprobe's own options only


def _fit_union(value: Any, choices: tuple[Any, ...]) -> Any:
    if value is None and type(None) in choices:
        return None
    wanted = []
    for choice in choices:
        if choice is type(None):
            continue
        try:
            return _fit(value, choice)
        except _Refused as refused:
            wanted.append(refused.args[0])
    raise _Refused(" or ".join(wanted) + (" or None" if type(None) in choices else ""))


def _fit_tuple(value: Any, items: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(items) != 2 or items[1] is not Ellipsis:
        raise TypeError(f"check_fields checks tuple[X, ...] only, not tuple{list(items)}")
    described = f"a str or a list or tuple of {items[0].__name__}"
    if isinstance(value, str) and items[0] is str:
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise _Refused(described)
    try:
        return tuple(_fit(item, items[0]) for item in value)
    except _Refused:
        raise _Refused(described) from None

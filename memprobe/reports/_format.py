"""The deterministic Rich console every text renderer uses (numbers: :mod:`memprobe.units`)."""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional, Sequence

from rich.console import Console, RenderableType


class PipeWidth(int):
    """The width given to output that reaches no terminal (a file or a pipe): tables are fitted to it as to any
    width, but titles and notes are not wrapped at it, since no screen would show them cut, and a table drawn wider
    than the width (:func:`print_table`) would sit under a title broken at an arbitrary column."""


def make_console(stream: IO[str], width: int) -> Console:
    """A console that writes plain text of a fixed width, whatever the terminal or environment says (Rich alone
    would take $COLUMNS, else 80 on a pipe); text it prints wraps at that width unless it is a :class:`PipeWidth`."""
    return Console(
        file=stream,
        width=width,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        force_interactive=False,
        no_color=True,
        markup=False,
        emoji=False,
        highlight=False,
        soft_wrap=isinstance(width, PipeWidth),
        legacy_windows=False,
        _environ={},
    )


@contextmanager
def console_for(stream: IO[str], width: int) -> Iterator[Console]:
    """A :func:`make_console` whose text reaches ``stream`` at the end, without trailing blanks on any line.

    Rich pads table lines to the table's width; stripping the padding keeps copied text and
    golden files clean and changes nothing a reader sees.
    """
    buffer = io.StringIO()
    yield make_console(buffer, width)
    stream.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def _render_text(renderable: RenderableType, width: int) -> str:
    buffer = io.StringIO()
    make_console(buffer, width).print(renderable)
    return buffer.getvalue()


def natural_width(renderable: RenderableType) -> int:
    """The width ``renderable`` takes when nothing limits it (its longest line)."""
    return max((len(line.rstrip()) for line in _render_text(renderable, 100_000).splitlines()), default=0)


def print_table(console: Console, table: RenderableType) -> None:
    """Print ``table`` at the console's width, or wider when that width would cut cells short.

    Rich shortens cells that do not fit to ``…``; a number cut to ``1,…`` is worse than a line
    longer than asked for, so then the table is drawn at its natural width instead.
    """
    text = _render_text(table, console.width)
    if "…" in text:
        text = _render_text(table, max(console.width, natural_width(table)))
    console.file.write(text)


def files_line(folder: Path, kinds: Sequence[tuple[Optional[str], str]], tail: str = "") -> str:
    """``files: FOLDER (a, b and c)``, naming only what ``folder`` holds: each ``(label, glob)`` found is its label,
    or, with no label, the names it matches (a committed run may keep no event streams; a comparison may have
    needed several launches, ``launch-N.json``)."""
    names: list[str] = []
    for label, pattern in kinds:
        found = sorted(path.name for path in folder.glob(pattern))
        names += ([label] if found else []) if label is not None else found
    listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)
    inside = ", ".join(part for part in (listed, tail) if part)
    return f"files: {folder} ({inside})" if inside else f"files: {folder}"

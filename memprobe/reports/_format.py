"""Number formatting and the deterministic Rich console every text renderer uses.

Bytes stay integers until here. Text shows binary mebibytes (``MiB`` = 2**20 bytes):
no decimals from 10 MiB up, one decimal below, ``0`` for exactly zero bytes, and
``n/a`` for a value that is not available (``None``), never ``0``.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import IO, Iterable, Iterator

from rich.console import Console, RenderableType

MIB = 1 << 20
NA = "n/a"
UNIT = "MiB"


def mib(value: int | None, *, signed: bool = False) -> str:
    """``value`` bytes as a MiB number without the unit (for table cells whose header names it)."""
    if value is None:
        return NA
    if value == 0:
        return "0"
    magnitude = abs(value) / MIB
    if magnitude < 10:
        text = f"{magnitude:,.1f}"
        if text == "0.0":  # a few bytes or KiB: not zero, so do not print as zero
            text = "<0.1"
    else:
        text = f"{magnitude:,.0f}"
    sign = "-" if value < 0 else ("+" if signed else "")
    return sign + text


def mib_unit(value: int | None, *, signed: bool = False) -> str:
    """``value`` bytes as ``"1,046 MiB"``; ``"n/a"`` when not available."""
    if value is None:
        return NA
    return f"{mib(value, signed=signed)} {UNIT}"


def mib_range(values: Iterable[int | None]) -> str:
    """``"378 to 530 MiB"`` over the known values, ``"522 MiB"`` when they agree, ``"n/a"`` when none is known."""
    known = [value for value in values if value is not None]
    if not known:
        return NA
    low, high = min(known), max(known)
    if low == high:
        return mib_unit(low)
    return f"{mib(low)} to {mib(high)} {UNIT}"


def make_console(stream: IO[str], width: int) -> Console:
    """A console that writes plain text of a fixed width, whatever the terminal or environment says."""
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
        soft_wrap=False,
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


def print_table(console: Console, table: RenderableType) -> None:
    """Print ``table`` at the console's width, or wider when that width would cut cells short.

    Rich shortens cells that do not fit to ``…``; a number cut to ``1,…`` is worse than a line
    longer than asked for, so then the table is drawn at its natural width instead.
    """
    text = _render_text(table, console.width)
    if "…" in text:
        natural = max((len(line.rstrip()) for line in _render_text(table, 100_000).splitlines()), default=0)
        text = _render_text(table, max(console.width, natural))
    console.file.write(text)

"""Bytes for people: the one place that turns byte counts (integers everywhere else) into MiB text.

MiB are binary mebibytes (2**20 bytes). Table cells: no decimals from 10 MiB up, one decimal below,
``0`` for exactly zero, ``<0.1`` (``>-0.1``) for a few bytes more (fewer), ``n/a`` for a value that is not available (never
``0``). Sentences (the gate's verdicts) keep small values exact in bytes.
"""

from __future__ import annotations

from typing import Iterable

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
NA = "n/a"
UNIT = "MiB"


def mib(value: int | None, *, signed: bool = False, decimals: int | None = None) -> str:
    """``value`` bytes as a MiB number without the unit (for table cells whose header names it).

    ``decimals`` fixes the number of decimals (``1.0``, ``-2.5``) instead of the table rule.
    """
    if value is None:
        return NA
    if decimals is not None:
        return ("+" if signed and value > 0 else "") + f"{value / MIB:,.{decimals}f}"
    if value == 0:
        return "0"
    magnitude = abs(value) / MIB
    if magnitude < 10:
        text = f"{magnitude:,.1f}"
        if text == "0.0":  # a few bytes or KiB: not zero, so do not print as zero
            return "<0.1" if value > 0 else ">-0.1"  # not "-<0.1", which reads as a typo
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



def mib_precise(value: int | None, signed: bool = False, *, grouped: bool = False) -> str:
    """Bytes as MiB in a sentence (the gate's verdicts): ``+486 MiB``, ``37.5 MiB``, ``512 B`` below 0.05 MiB, ``-`` if unknown.
    ``grouped``: thousands separated as every table writes them (``3,108 MiB``), for a table's cell."""
    if value is None:
        return "-"
    sign = "+" if signed and value >= 0 else ""
    if value != 0 and abs(value) < MIB // 20:
        return f"{sign}{value} B"
    mib = value / MIB
    comma = "," if grouped else ""
    text = f"{mib:{comma}.0f}" if value % MIB == 0 or abs(mib) >= 10 else f"{mib:{comma}.1f}"
    return f"{sign}{text} MiB"

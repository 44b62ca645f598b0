"""Gate thresholds: sizes and percentages as people write them, ``--threshold`` specs, and the
layering of rules into the limit that applies to one metric of one scenario (see :mod:`memprobe.gate.judge`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import Any, Iterable, Sequence

from memprobe.errors import UsageError
from memprobe.units import GIB, KIB, MIB as MiB, TIB, mib_precise
from memprobe.gate.baseline import DEFAULT_ABSOLUTE_BYTES, DEFAULT_RELATIVE, Baseline, ThresholdRule


# --------------------------------------------------------------------------- formatting


def format_percent(fraction: float, signed: bool = False) -> str:
    text = f"{fraction * 100:+.1f}%" if signed else f"{fraction * 100:.1f}%"
    return text


def _relative_text(relative: float) -> str:
    return f"{relative * 100:g}%"


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Limit:
    """The thresholds that apply to one metric, after layering."""

    relative: float
    absolute_bytes: int
    max_bytes: int | None = None
    ignore: bool = False

    def describe(self) -> str:
        text = f"+{_relative_text(self.relative)} and {mib_precise(self.absolute_bytes, signed=True)}"
        if self.max_bytes is not None:
            text += f", cap {mib_precise(self.max_bytes)}"
        return text

    def breaches(self, baseline_bytes: int, current_bytes: int) -> bool:
        increase = current_bytes - baseline_bytes
        return increase > self.absolute_bytes and increase > Fraction(repr(self.relative)) * baseline_bytes

    def improves(self, baseline_bytes: int, current_bytes: int) -> bool:
        decrease = baseline_bytes - current_bytes
        return decrease > self.absolute_bytes and decrease > Fraction(repr(self.relative)) * baseline_bytes


def _specificity(pattern: str | None) -> tuple[int, int, str]:
    if pattern is None:
        return (-1, 0, "")
    wildcards = sum(pattern.count(c) for c in "*?[")
    return (-wildcards, len(pattern), pattern)


def _ordered(rules: Iterable[ThresholdRule]) -> list[ThresholdRule]:
    def key(rule: ThresholdRule) -> tuple:
        level = (rule.scenario is not None) * 2 + (rule.metric is not None)
        # default (0) < metric (1) < scenario (2) < scenario+metric (3)
        return (level, _specificity(rule.metric))

    return sorted(rules, key=key)


def resolve_limit(scenario: str, metric: str, baseline_rules: Sequence[ThresholdRule],
                  overrides: Sequence[ThresholdRule] = ()) -> Limit:
    """The :class:`Limit` for ``metric`` of ``scenario`` (see the module docstring for the order)."""
    settings: dict[str, Any] = {}
    for layer in (baseline_rules, overrides):
        for rule in _ordered(layer):
            if rule.scenario is not None and rule.scenario != scenario:
                continue
            if rule.metric is not None and not fnmatchcase(metric, rule.metric):
                continue
            settings.update(rule.settings())
    return Limit(
        relative=float(settings.get("relative", DEFAULT_RELATIVE)),
        absolute_bytes=int(settings.get("absolute_bytes", DEFAULT_ABSOLUTE_BYTES)),
        max_bytes=settings.get("max_bytes"),
        ignore=bool(settings.get("ignore", False)),
    )


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {"": 1, "b": 1, "kib": KIB, "mib": MiB, "gib": GIB, "tib": TIB}


def parse_size(text: str, what: str = "size") -> int:
    """``67108864``, ``64MiB``, ``1.5GiB`` -> bytes. Decimal units (MB, GB) are refused as ambiguous."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        hint = " (use KiB, MiB or GiB: MB/GB are ambiguous)" if match and unit in {"k", "kb", "m", "mb", "g", "gb", "t", "tb"} else ""
        raise UsageError(f"{what} {text!r} is not a size like 64MiB, 1GiB or a number of bytes{hint}")
    value = Fraction(match.group(1)) * _UNITS[unit]
    if value.denominator != 1:
        value = Fraction(round(value))
    return int(value)


def parse_relative(text: str, what: str = "relative threshold") -> float:
    """``5%`` or ``0.05`` -> 0.05."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a percentage like 5% or a fraction like 0.05") from None
    if not (value >= 0) or value == float("inf"):  # nan, and 1e400 (inf as a float), are no fraction
        raise UsageError(f"{what} {text!r} must be a finite number >= 0 (a percentage like 5% or a fraction like 0.05)")
    if not raw.endswith("%") and value > 1:
        raise UsageError(f"{what} {text!r} is ambiguous: write {raw}% for a percentage (a bare number is a fraction, 0.05 = 5%)")
    return value


_SPEC_KEYS = ("scenario", "metric", "relative", "absolute", "max", "ignore")


def parse_threshold_spec(text: str) -> ThresholdRule:
    """``[scenario=NAME,][metric=GLOB,]relative=10%,absolute=128MiB,max=20GiB,ignore=true``."""
    values: dict[str, str] = {}
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _SPEC_KEYS or not value.strip():
            raise UsageError(
                f"--threshold {text!r}: expected comma-separated KEY=VALUE with KEY one of {', '.join(_SPEC_KEYS)} "
                f"(e.g. metric=moe_*/pynccl,relative=10%,absolute=128MiB)"
            )
        if key in values:
            raise UsageError(f"--threshold {text!r}: {key} given twice")
        values[key] = value.strip()
    if not set(values) & {"relative", "absolute", "max", "ignore"}:
        raise UsageError(f"--threshold {text!r} sets nothing; give relative=, absolute=, max= or ignore=")
    ignore = None
    if "ignore" in values:
        if values["ignore"].lower() not in {"true", "false", "1", "0", "yes", "no"}:
            raise UsageError(f"--threshold {text!r}: ignore must be true or false")
        ignore = values["ignore"].lower() in {"true", "1", "yes"}
    return ThresholdRule(
        scenario=values.get("scenario"),
        metric=values.get("metric"),
        relative=parse_relative(values["relative"], f"--threshold {text!r}: relative") if "relative" in values else None,
        absolute_bytes=parse_size(values["absolute"], f"--threshold {text!r}: absolute") if "absolute" in values else None,
        max_bytes=parse_size(values["max"], f"--threshold {text!r}: max") if "max" in values else None,
        ignore=ignore,
        source="command line",
    )


def check_overrides(baseline: Baseline, overrides: Sequence[ThresholdRule]) -> None:
    """Refuse command-line rules that name a scenario or metric the baseline lacks (typos)."""
    for rule in overrides:
        if rule.scenario is not None and rule.scenario not in baseline.scenarios:
            raise UsageError(f"--threshold scenario={rule.scenario}: not a scenario of {baseline.source} "
                             f"({', '.join(baseline.scenarios)})")
        if rule.metric is not None:
            pool = ([baseline.scenarios[rule.scenario]] if rule.scenario is not None
                    else list(baseline.scenarios.values()))
            if not any(fnmatchcase(m, rule.metric) for s in pool for m in s.metric_names()):
                raise UsageError(f"--threshold metric={rule.metric}: matches no metric in {baseline.source}")

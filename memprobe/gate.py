"""The memory-regression gate: judge a comparison against a baseline, and render the verdict.

Judging is pure (no files, no processes): :func:`judge` takes a loaded
:class:`~memprobe.baseline.Baseline` and a :class:`~memprobe.scenarios.Comparison` and
returns a :class:`GateResult`. Renderers write that result to a stream or a file.

Rules:

* A metric (one component of one rank of one scenario) **regresses** when its increase is
  larger than ``relative * baseline`` **and** larger than ``absolute_bytes``; it **improves**
  when its decrease passes both the same way. ``max_bytes`` is an absolute cap on the current
  value. Metrics the baseline does not hold are not judged.
* Thresholds are layered field by field, later layers winning: the baseline's ``default``;
  its ``metrics`` patterns (least specific first: fewer wildcards, then longer pattern);
  its per-scenario settings; that scenario's ``metrics`` patterns; then the command line
  in the same order. So command line > per scenario > per metric > default.
* A scenario whose environment key differs from the baseline's is **incomparable** (asv's
  ``x``): not judged, exit 4, unless ``allow_env_mismatch`` (then judged, and said so). A
  changed scenario definition (``definition_hash``) is never judged: update the baseline.
* A scenario, rank or metric that the baseline holds and the results lack is **missing**:
  a measurement problem, exit 3.

Exit code: 1 if any regression or cap exceeded; else 3 if anything is missing; else 4 if a
scenario is incomparable and not allowed; else 0.
"""

from __future__ import annotations

import io
import json
import re
import shlex
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO
from xml.etree import ElementTree

from memprobe.attribution import components_by_rank
from memprobe.baseline import (
    DEFAULT_ABSOLUTE_BYTES,
    DEFAULT_RELATIVE,
    Baseline,
    ThresholdRule,
    environment_key,
    metric_sort_key,
)
from memprobe.errors import ExitCode, UsageError
from memprobe.results import atomic_write_text
from memprobe.scenarios import Comparison

MiB = 1 << 20
GATE_JSON_SCHEMA_VERSION = 1

KINDS: tuple[str, ...] = ("regression", "cap_exceeded", "improvement", "missing")
FAILING_KINDS: tuple[str, ...] = ("regression", "cap_exceeded")


# --------------------------------------------------------------------------- formatting


def format_mib(value: int, signed: bool = False) -> str:
    """Bytes as MiB for people: ``+486 MiB``, ``37.5 MiB``, ``512 B`` below 0.05 MiB."""
    sign = "+" if signed and value >= 0 else ""
    if value != 0 and abs(value) < MiB // 20:
        return f"{sign}{value} B"
    mib = value / MiB
    text = f"{mib:.0f}" if value % MiB == 0 or abs(mib) >= 10 else f"{mib:.1f}"
    return f"{sign}{text} MiB"


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
        text = f"+{_relative_text(self.relative)} and {format_mib(self.absolute_bytes, signed=True)}"
        if self.max_bytes is not None:
            text += f", cap {format_mib(self.max_bytes)}"
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
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


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
    if not (value >= 0) or value == float("inf"):
        raise UsageError(f"{what} {text!r} must be >= 0")
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


# --------------------------------------------------------------------------- result model


@dataclass(frozen=True)
class Finding:
    """One judged difference. ``rank``/``metric`` are ``None`` when a whole scenario/rank is missing."""

    kind: str
    scenario: str
    rank: int | None
    metric: str | None
    baseline_bytes: int | None
    current_bytes: int | None
    limit: str
    note: str = ""
    cap_bytes: int | None = None

    @property
    def delta_bytes(self) -> int | None:
        if self.baseline_bytes is None or self.current_bytes is None:
            return None
        return self.current_bytes - self.baseline_bytes

    @property
    def relative_change(self) -> float | None:
        delta = self.delta_bytes
        if delta is None or not self.baseline_bytes:
            return None
        return delta / self.baseline_bytes

    def where(self) -> str:
        text = self.scenario
        if self.rank is not None:
            text += f" rank {self.rank}"
        if self.metric is not None:
            text += f" {self.metric}"
        return text

    def change_text(self) -> str:
        delta = self.delta_bytes
        if delta is None:
            return ""
        relative = self.relative_change
        return f"{format_mib(delta, signed=True)} ({format_percent(relative, signed=True) if relative is not None else 'baseline 0'})"

    def line(self) -> str:
        """The one line printed for this finding."""
        delta = self.delta_bytes
        relative = self.relative_change
        pct = format_percent(relative, signed=True) if relative is not None else "baseline 0"
        if self.kind == "regression" and delta is not None:
            return f"{self.where()} {format_mib(delta, signed=True)} over baseline ({pct}); limit {self.limit}"
        if self.kind == "cap_exceeded" and self.current_bytes is not None and self.cap_bytes is not None:
            over = format_mib(self.current_bytes - self.cap_bytes)
            return f"{self.where()} {format_mib(self.current_bytes)} exceeds its cap of {format_mib(self.cap_bytes)} by {over}"
        if self.kind == "improvement" and delta is not None:
            return f"{self.where()} {format_mib(delta, signed=True)} below baseline ({pct}); limit {self.limit}"
        return f"{self.where()}: no result" + (f" ({self.note})" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scenario": self.scenario,
            "rank": self.rank,
            "metric": self.metric,
            "baseline_bytes": self.baseline_bytes,
            "current_bytes": self.current_bytes,
            "delta_bytes": self.delta_bytes,
            "relative_change": None if self.relative_change is None else round(self.relative_change, 6),
            "limit": self.limit,
            "cap_bytes": self.cap_bytes,
            "note": self.note,
            "line": self.line(),
        }


@dataclass(frozen=True)
class Difference:
    key: str
    baseline: Any
    current: Any

    def describe(self) -> str:
        return f"{self.key} {_show(self.baseline)} -> {_show(self.current)}"


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Incomparable:
    """A scenario whose key differs from the baseline's. ``compared``: judged anyway (--allow-env-mismatch)."""

    scenario: str
    differences: tuple[Difference, ...]
    compared: bool

    @property
    def definition_changed(self) -> bool:
        return any(d.key == "definition_hash" for d in self.differences)

    def describe(self) -> str:
        return ", ".join(d.describe() for d in self.differences)

    def line(self) -> str:
        if self.compared:
            return f"{self.scenario}: environment differs from the baseline ({self.describe()}); compared anyway (--allow-env-mismatch)"
        if self.definition_changed:
            return (f"{self.scenario}: incomparable, the scenario definition changed ({self.describe()}); "
                    f"not judged: update the baseline")
        return (f"{self.scenario}: incomparable, environment differs from the baseline ({self.describe()}); "
                f"not judged (use --allow-env-mismatch to compare anyway, or update the baseline)")


@dataclass(frozen=True)
class Case:
    """One scenario x rank, as JUnit shows it. ``status``: pass, regression, missing or incomparable."""

    scenario: str
    rank: int
    status: str
    metrics_judged: int = 0
    env_mismatch: bool = False


@dataclass
class ScenarioSummary:
    scenario: str
    status: str  # pass | regression | missing | incomparable
    ranks: int
    regressions: int = 0
    improvements: int = 0
    peak_baseline: int | None = None  # max over ranks of total_after_first_use
    peak_current: int | None = None
    env_mismatch: bool = False


@dataclass
class GateResult:
    baseline_source: str
    results_source: str | None
    findings: list[Finding] = field(default_factory=list)
    incomparable: list[Incomparable] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    summaries: list[ScenarioSummary] = field(default_factory=list)
    not_in_baseline: list[str] = field(default_factory=list)
    allow_env_mismatch: bool = False
    error: str | None = None  # the run failed before anything could be judged

    def of_kind(self, *kinds: str) -> list[Finding]:
        return [finding for finding in self.findings if finding.kind in kinds]

    @property
    def breaches(self) -> list[Finding]:
        return self.of_kind(*FAILING_KINDS)

    @property
    def improvements(self) -> list[Finding]:
        return self.of_kind("improvement")

    @property
    def missing(self) -> list[Finding]:
        return self.of_kind("missing")

    @property
    def exit_code(self) -> ExitCode:
        if self.breaches:
            return ExitCode.REGRESSION
        if self.missing or self.error:
            return ExitCode.MEASUREMENT
        if any(not item.compared for item in self.incomparable):
            return ExitCode.INCOMPARABLE
        return ExitCode.OK

    @property
    def verdict(self) -> str:
        return {
            ExitCode.OK: "pass",
            ExitCode.REGRESSION: "regression",
            ExitCode.MEASUREMENT: "measurement failure",
            ExitCode.INCOMPARABLE: "incomparable",
        }[self.exit_code]

    def update_command(self) -> str:
        """The command that records the current numbers as the new baseline."""
        command = ["memprobe", "baseline", "update"]
        if self.results_source:
            command += ["--from", self.results_source]
        command += ["--out", self.baseline_source]
        return shlex.join(command)

    def headline(self) -> str:
        judged = [s for s in self.summaries if s.status != "incomparable" or s.env_mismatch]
        parts = []
        if self.breaches:
            failing = sorted({f.scenario for f in self.breaches})
            parts.append(f"{len(self.breaches)} regression{'s' if len(self.breaches) != 1 else ''} "
                         f"in {len(failing)} of {len(self.summaries)} scenario{'s' if len(self.summaries) != 1 else ''}")
        if self.missing or self.error:
            parts.append("measurement failure" if self.error else f"{len(self.missing)} missing result{'s' if len(self.missing) != 1 else ''}")
        not_judged = [item for item in self.incomparable if not item.compared]
        if not_judged:
            parts.append(f"{len(not_judged)} incomparable scenario{'s' if len(not_judged) != 1 else ''}")
        if self.improvements:
            parts.append(f"{len(self.improvements)} improvement{'s' if len(self.improvements) != 1 else ''}")
        if not parts:
            parts.append(f"{len(judged)} scenario{'s' if len(judged) != 1 else ''} within limits")
        word = "PASS" if self.exit_code == ExitCode.OK else "FAIL"
        return f"memprobe gate: {word}, {'; '.join(parts)} (exit {int(self.exit_code)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": GATE_JSON_SCHEMA_VERSION,
            "memprobe_gate": True,
            "verdict": self.verdict,
            "exit_code": int(self.exit_code),
            "headline": self.headline(),
            "baseline": self.baseline_source,
            "results": self.results_source,
            "allow_env_mismatch": self.allow_env_mismatch,
            "error": self.error,
            "findings": [finding.to_dict() for finding in self.findings],
            "incomparable": [
                {"scenario": item.scenario, "compared": item.compared,
                 "differences": [{"key": d.key, "baseline": d.baseline, "current": d.current} for d in item.differences]}
                for item in self.incomparable
            ],
            "cases": [
                {"scenario": c.scenario, "rank": c.rank, "status": c.status, "metrics_judged": c.metrics_judged,
                 "env_mismatch": c.env_mismatch}
                for c in self.cases
            ],
            "scenarios": [
                {"scenario": s.scenario, "status": s.status, "ranks": s.ranks, "regressions": s.regressions,
                 "improvements": s.improvements, "peak_baseline_bytes": s.peak_baseline,
                 "peak_current_bytes": s.peak_current, "env_mismatch": s.env_mismatch}
                for s in self.summaries
            ],
            "not_in_baseline": list(self.not_in_baseline),
            "update_command": self.update_command(),
        }


# --------------------------------------------------------------------------- judging


def environment_differences(baseline_key: dict[str, Any], current_key: dict[str, Any]) -> list[Difference]:
    differences: list[Difference] = []
    for key in baseline_key:
        old, new = baseline_key.get(key), current_key.get(key)
        if key == "nccl_env":
            old, new = old or {}, new or {}
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    differences.append(Difference(f"nccl_env.{name}", old.get(name), new.get(name)))
        elif old != new:
            differences.append(Difference(key, old, new))
    return differences


def _peak(values: Iterable[int | None]) -> int | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def judge(
    baseline: Baseline,
    comparison: Comparison,
    *,
    thresholds_override: Sequence[ThresholdRule] | None = None,
    allow_env_mismatch: bool = False,
    scenarios: Sequence[str] | None = None,
    results_source: str | None = None,
) -> GateResult:
    """Judge ``comparison`` against ``baseline``.

    Args:
        baseline: from :func:`memprobe.baseline.load_baseline`.
        comparison: fresh measurements or a loaded results folder.
        thresholds_override: command-line rules; they win over the baseline's.
        allow_env_mismatch: judge scenarios whose environment key differs (said so in the output).
        scenarios: judge only these baseline scenarios (default: all).
        results_source: how to name the results in output (default: ``comparison.path``).

    Raises:
        UsageError: ``scenarios`` names a scenario the baseline lacks.
    """
    overrides = tuple(thresholds_override or ())
    selected = baseline.select(scenarios)
    if results_source is None and comparison.path is not None:
        results_source = str(comparison.path)
    result = GateResult(baseline_source=baseline.source, results_source=results_source,
                        allow_env_mismatch=allow_env_mismatch)
    result.not_in_baseline = sorted(name for name in comparison.names() if name not in baseline.scenarios)

    for name in selected:
        stored = baseline.scenarios[name]
        summary = ScenarioSummary(scenario=name, status="pass", ranks=len(stored.ranks),
                                  peak_baseline=_peak(m.get("total_after_first_use") for m in stored.ranks.values()))
        result.summaries.append(summary)
        try:
            item = comparison.get(name)
        except KeyError:
            note = "the results hold no run of this scenario"
            result.findings.append(Finding("missing", name, None, None, None, None, "", note))
            result.cases.extend(Case(name, rank, "missing") for rank in stored.ranks)
            summary.status = "missing"
            continue

        differences = environment_differences(stored.environment_key, environment_key(item.run))
        current_hash = item.scenario.definition_hash()
        if current_hash != stored.definition_hash:
            differences.insert(0, Difference("definition_hash", stored.definition_hash, current_hash))
        if differences:
            definition_changed = differences[0].key == "definition_hash"
            compared = allow_env_mismatch and not definition_changed
            result.incomparable.append(Incomparable(name, tuple(differences), compared))
            if not compared:
                result.cases.extend(Case(name, rank, "incomparable") for rank in stored.ranks)
                summary.status = "incomparable"
                continue
            summary.env_mismatch = True

        current = components_by_rank(item.run)
        failure = item.run.record.failure
        failure_note = failure.describe() if failure is not None else ""
        if item.run.record.status != "complete" and not failure_note:
            failure_note = f"run status {item.run.record.status}"
        summary.peak_current = _peak(parts.get("total_after_first_use") for parts in current.values())
        for rank, metrics in stored.ranks.items():
            rank_findings: list[Finding] = []
            judged = 0
            parts = current.get(rank)
            if parts is None:
                note = f"rank {rank} has no readings" + (f"; {failure_note}" if failure_note else "")
                rank_findings.append(Finding("missing", name, rank, None, None, None, "", note))
            else:
                lacking: list[str] = []
                for metric in sorted(metrics, key=metric_sort_key):
                    limit = resolve_limit(name, metric, baseline.rules, overrides)
                    if limit.ignore:
                        continue
                    old, new = metrics[metric], parts.get(metric)
                    if new is None:
                        lacking.append(metric)
                        continue
                    judged += 1
                    text = limit.describe()
                    if limit.breaches(old, new):
                        rank_findings.append(Finding("regression", name, rank, metric, old, new, text))
                    elif limit.improves(old, new):
                        rank_findings.append(Finding("improvement", name, rank, metric, old, new, text))
                    if limit.max_bytes is not None and new > limit.max_bytes:
                        rank_findings.append(Finding("cap_exceeded", name, rank, metric, old, new, text,
                                                     cap_bytes=limit.max_bytes))
                if lacking or failure_note:
                    # partial sums of an unfinished rank look smaller than they are: no improvements
                    rank_findings = [f for f in rank_findings if f.kind != "improvement"]
                if lacking:
                    shown = ", ".join(lacking[:4]) + (f" and {len(lacking) - 4} more" if len(lacking) > 4 else "")
                    note = f"no reading for {shown}" + (f"; {failure_note}" if failure_note else "")
                    rank_findings.append(Finding("missing", name, rank, None, None, None, "", note))
            result.findings.extend(rank_findings)
            kinds = {finding.kind for finding in rank_findings}
            status = "regression" if kinds & set(FAILING_KINDS) else "missing" if "missing" in kinds else "pass"
            result.cases.append(Case(name, rank, status, judged, summary.env_mismatch))
            summary.regressions += sum(1 for f in rank_findings if f.kind in FAILING_KINDS)
            summary.improvements += sum(1 for f in rank_findings if f.kind == "improvement")
        statuses = {case.status for case in result.cases if case.scenario == name}
        summary.status = "regression" if "regression" in statuses else "missing" if "missing" in statuses else "pass"
    return result


def failed_result(baseline: Baseline, message: str, scenarios: Sequence[str] | None = None,
                  allow_env_mismatch: bool = False) -> GateResult:
    """A result for a run that failed before anything could be judged (exit 3), so reports still name every case."""
    result = GateResult(baseline_source=baseline.source, results_source=None, allow_env_mismatch=allow_env_mismatch,
                        error=message)
    for name in baseline.select(scenarios):
        stored = baseline.scenarios[name]
        result.summaries.append(ScenarioSummary(name, "missing", len(stored.ranks)))
        result.cases.extend(Case(name, rank, "missing") for rank in stored.ranks)
    return result


# --------------------------------------------------------------------------- renderers


def render_lines(result: GateResult, stream: TextIO) -> None:
    """One line per breach, then incomparable scenarios, missing results, improvements, the verdict."""
    for finding in result.breaches:
        stream.write(finding.line() + "\n")
    for item in result.incomparable:
        stream.write(item.line() + "\n")
    if result.error:
        stream.write(f"measurement failed: {result.error}\n")
    for finding in result.missing:
        stream.write(finding.line() + "\n")
    for name in result.not_in_baseline:
        stream.write(f"{name}: not in the baseline, not judged\n")
    for finding in result.improvements:
        stream.write(finding.line() + "\n")
    if result.improvements or result.breaches:
        stream.write(f"{_update_hint(result)}: {result.update_command()}\n")
    stream.write(result.headline() + "\n")


def _update_hint(result: GateResult) -> str:
    if result.breaches:
        return "If the increase is intended, record the new numbers in the baseline in this change"
    return "To record the improvement in the baseline"


def _status_text(summary: ScenarioSummary) -> str:
    text = {"pass": "pass", "regression": "REGRESSION", "missing": "MISSING", "incomparable": "incomparable"}[summary.status]
    if summary.env_mismatch:
        text += " (env differs)"
    return text


def _peak_text(summary: ScenarioSummary) -> tuple[str, str, str, str]:
    """Peak baseline, peak now, change in MiB, change in %."""
    old, new = summary.peak_baseline, summary.peak_current
    change = percent = "-"
    if old is not None and new is not None:
        change = format_mib(new - old, signed=new != old)
        percent = format_percent((new - old) / old, signed=new != old) if old else "-"
    return (format_mib(old) if old is not None else "-", format_mib(new) if new is not None else "-", change, percent)


def render_table(result: GateResult, stream: TextIO, width: int = 120) -> None:
    """A summary table per scenario (Rich, no colour, fixed width so logs are stable)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title="memprobe gate", box=box.ASCII2, title_justify="left")
    for name, justify in (("scenario", "left"), ("status", "left"), ("ranks", "right"), ("regressions", "right"),
                          ("improvements", "right"), ("peak baseline", "right"), ("peak now", "right"),
                          ("change", "right"), ("%", "right")):
        table.add_column(name, justify=justify, no_wrap=name in ("scenario", "status"))
    for summary in result.summaries:
        table.add_row(summary.scenario, _status_text(summary), str(summary.ranks), str(summary.regressions),
                      str(summary.improvements), *_peak_text(summary))
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, no_color=True,
                      highlight=False, emoji=False, markup=False, soft_wrap=False)
    console.print(table)
    stream.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
    stream.write("peak = largest total_after_first_use over ranks\n")


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(result: GateResult) -> str:
    """The verdict as GitHub-flavoured Markdown (for --markdown and $GITHUB_STEP_SUMMARY)."""
    out: list[str] = [f"### {result.headline()}", ""]
    source = f"Baseline `{result.baseline_source}`"
    if result.results_source:
        source += f", results `{result.results_source}`"
    out += [source + ".", ""]
    if result.error:
        out += [f"**Measurement failed:** {_cell(result.error)}", ""]
    out += ["| Scenario | Status | Ranks | Regressions | Improvements | Peak baseline | Peak now | Change | % |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for summary in result.summaries:
        out.append("| " + " | ".join(_cell(v) for v in (summary.scenario, _status_text(summary), summary.ranks,
                                                          summary.regressions, summary.improvements,
                                                          *_peak_text(summary))) + " |")
    out += ["", "Peak: largest `total_after_first_use` over ranks.", ""]
    details = [f for f in result.findings if f.kind in (*FAILING_KINDS, "improvement")]
    if details:
        out += ["| Result | Scenario | Rank | Metric | Baseline | Now | Change | Limit |",
                "|---|---|--:|---|--:|--:|--:|---|"]
        for finding in [*result.breaches, *result.improvements]:
            change = finding.change_text()
            out.append("| " + " | ".join(_cell(v) for v in (
                finding.kind.replace("_", " "), finding.scenario, finding.rank, f"`{finding.metric}`",
                format_mib(finding.baseline_bytes or 0), format_mib(finding.current_bytes or 0), change,
                finding.limit)) + " |")
        out.append("")
    if result.incomparable:
        out += ["**Environment differs from the baseline:**", ""]
        out += [f"- {_cell(item.line())}" for item in result.incomparable]
        out.append("")
    if result.missing:
        out += ["**Missing results:**", ""]
        out += [f"- {_cell(finding.line())}" for finding in result.missing]
        out.append("")
    if result.not_in_baseline:
        out += [f"Not in the baseline, not judged: {', '.join(result.not_in_baseline)}.", ""]
    if result.improvements or result.breaches:
        out += [f"{_update_hint(result)} (the pull request's diff is the acknowledgement):", "",
                "```", result.update_command(), "```", ""]
    return "\n".join(out)


def _junit_text(lines: Iterable[str]) -> str:
    return "\n".join(lines)


def build_junit_xml(result: GateResult) -> str:
    """JUnit XML: one ``<testcase>`` per scenario x rank (classname ``memprobe.gate.<scenario>``, name ``rank <n>``).

    * regression or cap exceeded: ``<failure type="regression">`` with the breach lines;
    * missing result: ``<error type="missing">`` (the measurement failed; exit 3);
    * incomparable environment or definition: ``<skipped>`` with what differs; the case was not
      judged, and the gate's exit code 4 is what fails the CI step;
    * compared despite a different environment (``--allow-env-mismatch``): judged as usual,
      with the differences in ``<system-out>``; improvements are also listed there.
    """
    by_case: dict[tuple[str, int | None], list[Finding]] = {}
    for finding in result.findings:
        by_case.setdefault((finding.scenario, finding.rank), []).append(finding)
    incomparable = {item.scenario: item for item in result.incomparable}
    counts = {"failures": 0, "errors": 0, "skipped": 0}
    cases: list[ElementTree.Element] = []
    for case in result.cases:
        element = ElementTree.Element("testcase", {"classname": f"memprobe.gate.{case.scenario}",
                                                   "name": f"rank {case.rank}", "time": "0"})
        findings = by_case.get((case.scenario, case.rank), []) + by_case.get((case.scenario, None), [])
        breaches = [f for f in findings if f.kind in FAILING_KINDS]
        missing = [f for f in findings if f.kind == "missing"]
        notes: list[str] = []
        if case.status == "regression":
            counts["failures"] += 1
            node = ElementTree.SubElement(element, "failure", {"type": "regression", "message": breaches[0].line()})
            node.text = _junit_text(f.line() for f in breaches)
        elif case.status == "missing":
            counts["errors"] += 1
            message = missing[0].line() if missing else f"{case.scenario} rank {case.rank}: no result ({result.error})"
            node = ElementTree.SubElement(element, "error", {"type": "missing", "message": message})
            node.text = _junit_text([f.line() for f in missing] or [message])
        elif case.status == "incomparable":
            counts["skipped"] += 1
            ElementTree.SubElement(element, "skipped", {"message": incomparable[case.scenario].line()})
        if case.env_mismatch and case.scenario in incomparable:
            notes.append(incomparable[case.scenario].line())
        notes += [f.line() for f in findings if f.kind == "improvement"]
        if notes:
            ElementTree.SubElement(element, "system-out").text = _junit_text(notes)
        cases.append(element)
    suite = ElementTree.Element("testsuite", {
        "name": "memprobe.gate", "tests": str(len(cases)), "failures": str(counts["failures"]),
        "errors": str(counts["errors"]), "skipped": str(counts["skipped"]), "time": "0",
    })
    properties = ElementTree.SubElement(suite, "properties")
    ElementTree.SubElement(properties, "property", {"name": "baseline", "value": result.baseline_source})
    if result.results_source:
        ElementTree.SubElement(properties, "property", {"name": "results", "value": result.results_source})
    ElementTree.SubElement(properties, "property", {"name": "verdict", "value": result.verdict})
    suite.extend(cases)
    root = ElementTree.Element("testsuites", {"name": "memprobe gate", "tests": str(len(cases)),
                                              "failures": str(counts["failures"]), "errors": str(counts["errors"]),
                                              "skipped": str(counts["skipped"]), "time": "0"})
    root.append(suite)
    ElementTree.indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"


def write_junit_xml(result: GateResult, path: str | Path) -> None:
    atomic_write_text(path, build_junit_xml(result))


def write_markdown(result: GateResult, path: str | Path) -> None:
    atomic_write_text(path, render_markdown(result))


def write_json(result: GateResult, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")


def append_step_summary(result: GateResult, path: str | Path) -> None:
    """Append the Markdown verdict to a GitHub job summary file ($GITHUB_STEP_SUMMARY)."""
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(render_markdown(result) + "\n")


__all__ = [
    "Case", "Difference", "Finding", "GateResult", "Incomparable", "Limit", "ScenarioSummary",
    "append_step_summary", "build_junit_xml", "check_overrides", "failed_result", "format_mib", "judge",
    "parse_relative", "parse_size", "parse_threshold_spec", "render_lines", "render_markdown", "render_table",
    "resolve_limit", "write_json", "write_junit_xml", "write_markdown",
]

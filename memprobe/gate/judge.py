"""The memory-regression gate: judge a comparison against a baseline, and render the verdict.

Judging is pure (no files, no processes): :func:`judge` takes a loaded
:class:`~memprobe.gate.baseline.Baseline` and a :class:`~memprobe.model.comparison.Comparison` and
returns a :class:`GateResult`. Renderers write that result to a stream or a file.

Rules:

* A metric (one component of one rank of one scenario) **regresses** when its increase is
  larger than ``relative * baseline`` **and** larger than ``absolute_bytes``; it **improves**
  when its decrease passes both the same way. ``max_bytes`` is an absolute cap on the current
  value. A metric the results hold and the baseline lacks is missing (below), never silently passed.
* Thresholds are layered field by field, later layers winning: the baseline's ``default``;
  its ``metrics`` patterns (least specific first: fewer wildcards, then longer pattern);
  its per-scenario settings; that scenario's ``metrics`` patterns; then the command line
  in the same order. So command line > per scenario > per metric > default.
* A scenario whose environment key differs from the baseline's is **incomparable** (asv's
  ``x``): not judged, exit 4, unless ``allow_env_mismatch`` (then judged, and said so). A
  changed scenario definition (``definition_hash``) is never judged: update the baseline.
* A scenario, rank or metric that the baseline holds and the results lack is **missing**:
  a measurement problem, exit 3; so is a rank or metric the results hold and the baseline lacks.
* Bytes of another kind of memory (:func:`memprobe.model.memory_kind.memory_kind`: GPU against host RSS)
  are never judged, not even with ``allow_env_mismatch``.

Exit code: 1 if any regression or cap exceeded; else 3 if anything is missing; else 4 if a
scenario is incomparable and not allowed; else 0.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from memprobe import engines
from memprobe.analysis.attribution import components_by_rank
from memprobe.gate.baseline import (
    describe_installation,
    installed_engine,
    installation_of,
    Baseline,
    ThresholdRule,
    environment_key,
    metric_sort_key,
)
from memprobe.errors import ExitCode
from memprobe.gate.thresholds import format_percent, resolve_limit
from memprobe.model.comparison import Comparison
from memprobe.model.memory_kind import ESTIMATED_GPU, HOST_RSS, HOST_RSS_ANON, memory_kind
from memprobe.model.scenario import definition_differences
from memprobe.units import mib_precise

GATE_JSON_SCHEMA_VERSION = 1

FAILING_KINDS: tuple[str, ...] = ("regression", "cap_exceeded")
MEMORY_KIND = "memory_kind"
#: differences --allow-env-mismatch never waives: they change what the bytes are, not where they were read
NEVER_WAIVED: tuple[str, ...] = (MEMORY_KIND, "definition_hash")


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
        return f"{mib_precise(delta, signed=True)} ({format_percent(relative, signed=True) if relative is not None else 'baseline 0'})"

    def line(self) -> str:
        """The one line printed for this finding."""
        delta = self.delta_bytes
        relative = self.relative_change
        pct = format_percent(relative, signed=True) if relative is not None else "baseline 0"
        if self.kind == "regression" and delta is not None:
            return f"{self.where()} {mib_precise(delta, signed=True)} over baseline ({pct}); limit {self.limit}"
        if self.kind == "cap_exceeded" and self.current_bytes is not None and self.cap_bytes is not None:
            over = mib_precise(self.current_bytes - self.cap_bytes)
            return f"{self.where()} {mib_precise(self.current_bytes)} exceeds its cap of {mib_precise(self.cap_bytes)} by {over}"
        if self.kind == "improvement" and delta is not None:
            return f"{self.where()} {mib_precise(delta, signed=True)} below baseline ({pct}); limit {self.limit}"
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
    if value == "":  # e.g. no driver on a --device cpu run: shown, not printed as nothing
        return "(none)"
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

    @property
    def kind_changed(self) -> bool:
        return any(d.key == MEMORY_KIND for d in self.differences)

    def describe(self) -> str:
        return ", ".join(d.describe() for d in self.differences)

    def line(self) -> str:
        if self.compared:
            return f"{self.scenario}: environment differs from the baseline ({self.describe()}); compared anyway (--allow-env-mismatch)"
        if self.kind_changed:
            return (f"{self.scenario}: incomparable, another kind of memory ({self.describe()}); never judged, "
                    f"not even with --allow-env-mismatch: record a baseline of this kind")
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
class ScenarioVerdict:
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
    summaries: list[ScenarioVerdict] = field(default_factory=list)
    not_in_baseline: list[str] = field(default_factory=list)
    # what the verdict should say besides findings, e.g. which installed engine each side was measured with
    notes: list[str] = field(default_factory=list)
    allow_env_mismatch: bool = False
    error: str | None = None  # the run failed before anything could be judged
    memory_kind: str = ""  # what the judged bytes are (memprobe.model.memory_kind): never judged against another kind
    guards: str = ""  # whose code the bytes come from (memprobe.gate.guards)
    update_arguments: list[str] = field(default_factory=list)  # baseline update's arguments for the same scenarios

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
        command += [*self.update_arguments, "--out", self.baseline_source]
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
        if self.memory_kind == ESTIMATED_GPU:
            word += " (estimated, not measured)"
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
            "memory_kind": self.memory_kind,
            "error": self.error,
            "notes": list(self.notes),
            "guards": self.guards,
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


def installation_note(scenario: str, label: str, baseline: Any, current: Any) -> str | None:
    """Which installation of the engine (``label``: "SGLang") the baseline was recorded with and which one was
    judged: the one under test may differ from the baseline's, since that is the change a gate in the engine's own
    CI judges."""
    if not baseline and not current:
        return None
    return (f"{scenario}: {label} under test {describe_installation(current)}; "
            f"baseline recorded with {describe_installation(baseline)}")


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
        baseline: from :func:`memprobe.gate.baseline.load_baseline`.
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
                        allow_env_mismatch=allow_env_mismatch, memory_kind=memory_kind(baseline))
    result.not_in_baseline = sorted(name for name in comparison.names() if name not in baseline.scenarios)
    if any(memory_kind(baseline.scenarios[name]) in (HOST_RSS_ANON, HOST_RSS) for name in selected):
        result.notes.append("the bytes are host memory (RSS) of each rank, measured with --device cpu: not GPU memory")
    if any(memory_kind(baseline.scenarios[name]) == ESTIMATED_GPU for name in selected):
        result.notes.append("the bytes are ESTIMATED GPU memory (memprobe estimate: NCCL's rules and a calibration), "
                            "estimated against an estimated baseline: nothing was measured")
    result.notes.extend(comparison.engine_notes())
    for name in selected:
        _judge_scenario(result, baseline, comparison, name, overrides, allow_env_mismatch)
    return result


def _judge_scenario(result: GateResult, baseline: Baseline, comparison: Comparison, name: str,
                    overrides: tuple[ThresholdRule, ...], allow_env_mismatch: bool) -> None:
    """One baseline scenario: missing, incomparable, or judged rank by rank; appends to ``result``."""
    stored = baseline.scenarios[name]
    summary = ScenarioVerdict(scenario=name, status="pass", ranks=len(stored.ranks),
                              peak_baseline=_peak(m.get("total_after_first_use") for m in stored.ranks.values()))
    result.summaries.append(summary)
    try:
        item = comparison.get(name)
    except KeyError:
        lost = [entry.split(" ", 1)[1].strip("()") for entry in comparison.missing if entry.split(" ", 1)[0] == name]
        note = lost[0] if lost else "the results hold no run of this scenario"
        result.findings.append(Finding("missing", name, None, None, None, None, "", note))
        result.cases.extend(Case(name, rank, "missing") for rank in stored.ranks)
        summary.status = "missing"
        return
    installed = installed_engine(item.run) or next(iter(stored.measured_with), None)
    label = next((engine.label for engine in engines.all_engines() if engine.name == installed), installed or "")
    change = installation_note(name, label, stored.measured_with.get(installed) if installed else None,
                               installation_of(item.run))
    if change:
        result.notes.append(change)
    if not _comparable(result, summary, stored, item, allow_env_mismatch):
        return
    current = components_by_rank(item.run)
    failure_note = _failure_note(item)
    summary.peak_current = _peak(parts.get("total_after_first_use") for parts in current.values())
    for rank, metrics in stored.ranks.items():
        rank_findings, judged = _judge_rank(baseline, overrides, name, rank, metrics, current.get(rank), failure_note)
        result.findings.extend(rank_findings)
        kinds = {finding.kind for finding in rank_findings}
        status = "regression" if kinds & set(FAILING_KINDS) else "missing" if "missing" in kinds else "pass"
        result.cases.append(Case(name, rank, status, judged, summary.env_mismatch))
        summary.regressions += sum(1 for f in rank_findings if f.kind in FAILING_KINDS)
        summary.improvements += sum(1 for f in rank_findings if f.kind == "improvement")
    for rank in sorted(set(current) - set(stored.ranks)):  # a verdict needs the reverse too
        result.findings.append(Finding("missing", name, rank, None, None, None, "",
                                       f"the baseline holds no rank {rank}, which the results hold"))
        result.cases.append(Case(name, rank, "missing"))
    statuses = {case.status for case in result.cases if case.scenario == name}
    summary.status = "regression" if "regression" in statuses else "missing" if "missing" in statuses else "pass"


def _comparable(result: GateResult, summary: ScenarioVerdict, stored: Any, item: Any, allow_env_mismatch: bool) -> bool:
    """Whether to judge: same definition, and the same environment key (or --allow-env-mismatch); records why not."""
    differences = environment_differences(stored.environment_key, environment_key(item.run))
    current_hash = item.scenario.definition_hash()
    if current_hash != stored.definition_hash:
        changed = [Difference(f"definition.{key}", old, new)
                   for key, old, new in definition_differences(stored.definition, item.scenario.definition())]
        differences[0:0] = [Difference("definition_hash", stored.definition_hash, current_hash), *changed]
    kinds = memory_kind(stored), memory_kind(item.run)
    if kinds[0] != kinds[1]:
        differences.insert(0, Difference(MEMORY_KIND, *kinds))
    if not differences:
        return True
    compared = allow_env_mismatch and not any(d.key in NEVER_WAIVED for d in differences)
    result.incomparable.append(Incomparable(summary.scenario, tuple(differences), compared))
    if not compared:
        result.cases.extend(Case(summary.scenario, rank, "incomparable") for rank in stored.ranks)
        summary.status = "incomparable"
        return False
    summary.env_mismatch = True
    return True


def _failure_note(item: Any) -> str:
    failure = item.run.record.failure
    note = failure.describe() if failure is not None else ""
    if item.run.record.status != "complete" and not note:
        note = f"run status {item.run.record.status}"
    return note


def _judge_rank(baseline: Baseline, overrides: tuple[ThresholdRule, ...], name: str, rank: int,
                metrics: dict[str, int], parts: dict[str, int | None] | None, failure_note: str) -> tuple[list[Finding], int]:
    """Every metric of one rank against its limit: the findings and how many metrics were judged."""
    if parts is None:
        note = f"rank {rank} has no readings" + (f"; {failure_note}" if failure_note else "")
        return [Finding("missing", name, rank, None, None, None, "", note)], 0
    findings: list[Finding] = []
    lacking: list[str] = []
    judged = 0
    for metric in sorted(metrics, key=metric_sort_key):
        limit = resolve_limit(name, metric, baseline.rules, overrides)
        if limit.ignore:
            continue
        old, new = metrics[metric], parts.get(metric)
        if new is None:
            lacking.append(metric)
            continue
        judged += 1
        findings.extend(_metric_findings(limit, name, rank, metric, old, new))
    unrecorded = [metric for metric, value in sorted(parts.items(), key=lambda item: metric_sort_key(item[0]))
                  if value is not None and metric not in metrics]
    if lacking or failure_note:
        # partial sums of an unfinished rank look smaller than they are: no improvements
        findings = [f for f in findings if f.kind != "improvement"]
    if lacking:
        shown = ", ".join(lacking[:4]) + (f" and {len(lacking) - 4} more" if len(lacking) > 4 else "")
        note = f"no reading for {shown}" + (f"; {failure_note}" if failure_note else "")
        findings.append(Finding("missing", name, rank, None, None, None, "", note))
    if unrecorded:
        shown = ", ".join(unrecorded[:4]) + (f" and {len(unrecorded) - 4} more" if len(unrecorded) > 4 else "")
        findings.append(Finding("missing", name, rank, None, None, None, "", f"the baseline holds no value for {shown}"))
    return findings, judged


def _metric_findings(limit: Any, name: str, rank: int, metric: str, old: int, new: int) -> list[Finding]:
    text = limit.describe()
    findings = []
    if limit.breaches(old, new):
        findings.append(Finding("regression", name, rank, metric, old, new, text))
    elif limit.improves(old, new):
        findings.append(Finding("improvement", name, rank, metric, old, new, text))
    if limit.max_bytes is not None and new > limit.max_bytes:
        findings.append(Finding("cap_exceeded", name, rank, metric, old, new, text, cap_bytes=limit.max_bytes))
    return findings


def failed_result(baseline: Baseline, message: str, scenarios: Sequence[str] | None = None,
                  allow_env_mismatch: bool = False) -> GateResult:
    """A result for a run that failed before anything could be judged (exit 3), so reports still name every case."""
    result = GateResult(baseline_source=baseline.source, results_source=None, allow_env_mismatch=allow_env_mismatch,
                        error=message, memory_kind=memory_kind(baseline))
    for name in baseline.select(scenarios):
        stored = baseline.scenarios[name]
        result.summaries.append(ScenarioVerdict(name, "missing", len(stored.ranks)))
        result.cases.extend(Case(name, rank, "missing") for rank in stored.ranks)
    return result

"""Renderers of a gate verdict: lines and a table for the terminal, Markdown, JUnit XML, JSON, the step summary."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Literal, TextIO
from xml.etree import ElementTree

from memprobe.gate.judge import FAILING_KINDS, Finding, GateResult, ScenarioVerdict
from memprobe.gate.thresholds import format_percent
from memprobe.units import MIB, mib_precise
from memprobe.model.records import append_step_summary, atomic_write_text

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
    for note in result.notes:
        stream.write(note + "\n")
    for finding in result.improvements:
        stream.write(finding.line() + "\n")
    if result.improvements or result.breaches:
        stream.write(f"{_update_hint(result)}: {result.update_command()}\n")
    stream.write(result.headline() + "\n")


def _update_hint(result: GateResult) -> str:
    if result.breaches:
        return "If the increase is intended, record the new numbers in the baseline in this change"
    return "To record the improvement in the baseline"


def _status_text(summary: ScenarioVerdict) -> str:
    text = {"pass": "pass", "regression": "REGRESSION", "missing": "MISSING", "incomparable": "incomparable"}[summary.status]
    if summary.env_mismatch:
        text += " (env differs)"
    return text


def _two_digits(value: float) -> str:
    """A signed number too small for one decimal, with its first two significant digits (-0.0039, +0.00049)."""
    return f"{value:+.{max(2, 1 - math.floor(math.log10(abs(value))))}f}"


def _change_text(delta: int) -> str:
    """A change in the table's unit (MiB, as the peaks beside it), never bytes: -4096 B reads -0.0039 MiB."""
    if delta == 0 or abs(delta) >= MIB // 10:  # mib_precise: one decimal from 0.1 MiB
        return mib_precise(delta, signed=delta != 0, grouped=True)
    return f"{_two_digits(delta / MIB)} MiB"


def _percent_text(fraction: float) -> str:
    """A relative change; one that rounds to 0.0 % but is not zero keeps its sign and two digits (-0.00032%)."""
    if fraction == 0 or abs(fraction) >= 0.0005:
        return format_percent(fraction, signed=fraction != 0)
    return f"{_two_digits(fraction * 100)}%"


def _peak_text(summary: ScenarioVerdict) -> tuple[str, str, str, str]:
    """Peak baseline, peak now, change in MiB, change in %."""
    old, new = summary.peak_baseline, summary.peak_current
    change = percent = "-"
    if old is not None and new is not None:
        change = _change_text(new - old)
        percent = _percent_text((new - old) / old) if old else "-"
    return (mib_precise(old, grouped=True), mib_precise(new, grouped=True), change, percent)


def render_table(result: GateResult, stream: TextIO, width: int = 120) -> None:
    """A summary table per scenario (Rich, no colour, fixed width so logs are stable)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title="memprobe gate", box=box.SIMPLE_HEAD, title_justify="left", show_edge=False, pad_edge=False)  # as every other table
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("scenario", "left"), ("status", "left"), ("ranks", "right"), ("regressions", "right"),
        ("improvements", "right"), ("peak baseline", "right"), ("peak now", "right"), ("change", "right"), ("%", "right"))
    for name, justify in columns:
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
    """One Markdown cell or line: a line break would end the table (and a "#" after it start a heading)."""
    text = " ".join(str(value).replace("|", "\\|").splitlines())
    return "\\" + text if text.lstrip().startswith("#") else text


def render_markdown(result: GateResult) -> str:
    """The verdict as GitHub-flavoured Markdown (for --markdown and $GITHUB_STEP_SUMMARY)."""
    out: list[str] = [f"### {result.headline()}", ""]
    source = f"Baseline `{_cell(result.baseline_source)}`"
    if result.results_source:
        source += f", results `{_cell(result.results_source)}`"
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
                mib_precise(finding.baseline_bytes or 0, grouped=True), mib_precise(finding.current_bytes or 0, grouped=True),
                change,
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
    if result.notes:
        out += [f"- {_cell(note)}" for note in result.notes] + [""]
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


def append_to_step_summary(result: GateResult) -> None:
    """Append the Markdown verdict to the GitHub job summary ($GITHUB_STEP_SUMMARY), when that is set."""
    append_step_summary(render_markdown(result))


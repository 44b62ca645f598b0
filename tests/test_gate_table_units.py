"""The gate's summary table (terminal and Markdown) gives a change in the unit of the peaks beside it."""

from __future__ import annotations

import io

from memprobe.gate.judge import GateResult, ScenarioVerdict
from memprobe.gate.render import render_markdown, render_table

MiB = 1 << 20


def _result(old: int, new: int) -> GateResult:
    result = GateResult(baseline_source="b.json", results_source=None)
    result.summaries.append(ScenarioVerdict("tp2", "pass", 2, peak_baseline=old, peak_current=new))
    return result


def test_a_change_of_a_few_kib_reads_in_mib_with_its_sign_and_never_as_minus_zero():
    out = io.StringIO()
    render_table(_result(6000 * MiB, 6000 * MiB - 4096), out)
    row = next(line for line in out.getvalue().splitlines() if line.startswith("tp2"))
    assert row.split()[-4:] == ["MiB", "-0.0039", "MiB", "-0.000065%"], row
    assert " B " not in row and "-0.0%" not in row
    markdown = render_markdown(_result(6000 * MiB, 6000 * MiB + 512))
    assert "+0.00049 MiB" in markdown and "+0.0%" not in markdown and "512 B" not in markdown


def test_changes_of_a_tenth_of_a_mib_and_more_and_none_read_as_before():
    out = io.StringIO()
    render_table(_result(1142 * MiB, 1190 * MiB), out)
    render_table(_result(1142 * MiB, 1142 * MiB), out)
    rows = [line.split() for line in out.getvalue().splitlines() if line.startswith("tp2")]
    assert rows[0][-3:] == ["+48", "MiB", "+4.2%"] and rows[1][-3:] == ["0", "MiB", "0.0%"]


def test_peaks_and_changes_of_thousands_of_mib_read_as_every_other_table_writes_them():
    out = io.StringIO()
    render_table(_result(3108 * MiB, 4200 * MiB), out)
    row = next(line for line in out.getvalue().splitlines() if line.startswith("tp2"))
    assert row.split()[-7:] == ["3,108", "MiB", "4,200", "MiB", "+1,092", "MiB", "+35.1%"], row
    assert "| 3,108 MiB | 4,200 MiB | +1,092 MiB |" in render_markdown(_result(3108 * MiB, 4200 * MiB))

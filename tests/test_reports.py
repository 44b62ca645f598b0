"""Reporting layer: golden files for every text and data output, plus the contracts around them.

Inputs are synthetic (tests/support.py), with ranks that differ so that the worst-rank logic
is exercised: rank 1 carries 8 MiB more per pynccl communicator, rank 3 144 MiB less.

Regenerate the golden files after an intended change with::

    MEMPROBE_UPDATE_GOLDEN=1 PYTHONPATH=. python -m pytest tests/test_reports.py -q

and review the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import builtins
import csv
import difflib
import io
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import MiB, headline_scenarios, synthetic_comparison, synthetic_run, write_comparison  # noqa: E402

from memprobe.errors import UsageError  # noqa: E402
from memprobe.engines.sglang.layout import SGLangLayout as Layout  # noqa: E402
from memprobe.reports import (  # noqa: E402
    long_dataframe,
    render_comparison,
    render_markdown,
    render_run,
    summary_dataframe,
    write_csv,
    write_json,
    write_markdown,
    write_plot,
    write_summary_csv,
)
from memprobe.units import mib, mib_unit  # noqa: E402
from memprobe.reports.exports import LONG_COLUMNS, summary_columns  # noqa: E402
from memprobe.model.records import RunRecord  # noqa: E402
from memprobe.model.comparison import Comparison, ScenarioRun  # noqa: E402
from memprobe.model.scenario import Scenario  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MEMPROBE_UPDATE_GOLDEN") == "1"
RANK_EXTRA = {1: 8 * MiB, 3: -144 * MiB}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")
        return
    assert path.is_file(), f"golden file {path} is missing; create it with MEMPROBE_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True), text.splitlines(keepends=True), f"golden/{name}", "actual"
            )
        )
        pytest.fail(f"output differs from golden/{name} (MEMPROBE_UPDATE_GOLDEN=1 to accept):\n{diff}")


@pytest.fixture
def comparison() -> Comparison:
    return synthetic_comparison(rank_extra=RANK_EXTRA)


def with_missing(comparison: Comparison) -> Comparison:
    """Rank 2's tp custom all-reduce reading could not be taken (NVML gave nothing): None, not 0."""
    runs = []
    for item in comparison.runs:
        readings = [
            replace(r, primary_bytes=None, process_bytes=None, device_used_bytes=None)
            if (r.rank, r.group, r.step) == (2, "tp", "custom_allreduce")
            else r
            for r in item.run.readings
        ]
        runs.append(ScenarioRun(item.scenario, replace(item.run, readings=readings)))
    return replace(comparison, runs=runs)


def small_comparison() -> Comparison:
    """One two-rank scenario with one missing reading: small enough for a readable JSON golden file."""
    scenario = Scenario(name="tp2", layout=Layout(tp=2), stack="lean")
    run = synthetic_run(scenario, rank_extra={1: -16 * MiB})
    readings = [
        replace(r, primary_bytes=None) if (r.rank, r.group, r.step) == (1, "world", "first_use") else r
        for r in run.readings
    ]
    return Comparison("small", "tp2", [ScenarioRun(scenario, replace(run, readings=readings))])


def rendered(function, *args, **kwargs) -> str:
    stream = io.StringIO()
    function(*args, stream, **kwargs)
    return stream.getvalue()


# --------------------------------------------------------------------------- formatting


def test_mib_formatting_rules():
    assert mib(None) == "n/a"
    assert mib(0) == "0"
    assert mib(2 * MiB) == "2.0"
    assert mib(9 * MiB + MiB // 2) == "9.5"
    assert mib(10 * MiB) == "10"
    assert mib(1046 * MiB) == "1,046"
    assert mib(-144 * MiB) == "-144"
    assert mib(1044 * MiB, signed=True) == "+1,044"
    assert mib(512) == "<0.1"  # not zero bytes, so never printed as 0
    assert mib_unit(None) == "n/a"
    assert mib_unit(522 * MiB) == "522 MiB"


# --------------------------------------------------------------------------- run table


def test_run_table_golden(comparison):
    check_golden("run_table.txt", rendered(render_run, comparison.get("tp4-ep2-full").run))


def test_run_table_per_rank_golden(comparison):
    check_golden("run_table_per_rank.txt", rendered(render_run, comparison.get("tp4-ep2-full").run, per_rank=True))


def test_run_table_missing_value_is_na_golden(comparison):
    text = rendered(render_run, with_missing(comparison).get("tp4-ep2-lean").run, per_rank=True)
    check_golden("run_table_missing.txt", text)
    row = next(line for line in text.splitlines() if line.startswith("tp: custom all-reduce"))
    assert row.split()[-2:] == ["n/a", "38"], row  # rank 2 unknown, rank 3 known
    assert "between steps (unattributed)" in text  # the reading after the gap is unknown too


def test_run_table_summary_view_counts_known_ranks(comparison):
    text = rendered(render_run, with_missing(comparison).get("tp4-ep2-lean").run)
    row = next(line for line in text.splitlines() if line.startswith("tp: custom all-reduce"))
    assert "(3/4 ranks known)" in row


def test_run_table_header_and_files_line(comparison, tmp_path):
    run = comparison.get("tp4-ep2-full").run
    text = rendered(render_run, run)
    assert text.splitlines()[0].startswith("scenario tp4-ep2-full (run synthetic-tp4-ep2-full): --tp 4 --ep 2, stack full")
    assert "GPU NVIDIA H100 80GB HBM3" in text and "sampling process" in text
    assert "files:" not in text
    run.path = tmp_path / "run"
    (run.path / "ranks").mkdir(parents=True)
    for name in ("run.json", "readings.csv", "ranks/rank-00000.jsonl"):
        (run.path / name).write_text("")
    def files_said() -> str:  # the last line, unwrapped (a long path wraps at the table's width)
        text = " ".join(rendered(render_run, run).split())
        return text[text.rindex("files: "):]

    assert files_said() == f"files: {run.path} (run.json, readings.csv and ranks/rank-NNNNN.jsonl)"
    (run.path / "ranks" / "rank-00000.jsonl").unlink()  # as committed runs keep no streams: the line names none
    assert files_said() == f"files: {run.path} (run.json and readings.csv)"


def test_run_table_worst_rank_column(comparison):
    text = rendered(render_run, comparison.get("tp4-ep2-full").run)
    row = next(line for line in text.splitlines() if line.startswith("moe_ep: pynccl"))
    assert row.split()[-4:] == ["340", "484", "492", "1"]  # min, median, max, worst rank


# --------------------------------------------------------------------------- comparison table


def test_compare_table_golden(comparison):
    check_golden("compare_table.txt", rendered(render_comparison, comparison))


def test_compare_table_per_rank_golden(comparison):
    check_golden("compare_table_per_rank.txt", rendered(render_comparison, comparison, per_rank=True, all_ranks=True))


def test_compare_table_per_rank_puts_alike_ranks_in_one_row(comparison):
    """The synthetic ranks 0 and 2 read alike (in every scenario and the baseline): one row "0, 2", the rest as
    --all-ranks shows them."""
    text = rendered(render_comparison, comparison, per_rank=True)
    every = rendered(render_comparison, comparison, per_rank=True, all_ranks=True)
    assert "one row per rank class (ranks that read alike)" in text and "--all-ranks shows one row per rank" in text
    full = [line for line in text.splitlines() if line.startswith("tp4-ep2-full")]
    assert full and full[0].split()[1:3] == ["0,", "2"]
    assert full[0].split()[3:] == [line for line in every.splitlines() if line.startswith("tp4-ep2-full")][0].split()[2:]
    assert not [line for line in text.splitlines() if re.match(r"^\s+2\s", line)]  # rank 2 only in the "0, 2" row
    assert len(text.splitlines()) == len(every.splitlines()) - 3 + 1  # a row fewer per scenario, one note more


def test_compare_table_content(comparison):
    text = rendered(render_comparison, comparison)
    full = next(line for line in text.splitlines() if line.startswith("tp4-ep2-full"))
    # worst rank 1 (rank 1 has 8 MiB more per pynccl): 2,114 after init, 4,058 after first use,
    # +2,032 vs the baseline's worst rank (2,026), spread 4,058 - 3,602 = 456
    assert full.split()[1:3] == ["1", "of"]
    assert "4,058" in full and "+2,032" in full and full.rstrip().endswith("456")
    assert "lean saves on --tp 4 --ep 2 (tp4-ep2-full minus tp4-ep2-lean), per rank:" in text
    assert "after first use min 756 / median 1,044 / max 1,060 MiB" in text
    assert "moe_ep init 378 to 530 MiB full vs 0 MiB lean" in text


def test_compare_table_missing_value_is_na(comparison):
    text = rendered(render_comparison, with_missing(comparison), per_rank=True)
    assert "n/a" in text
    lean_rank2 = [line for line in text.splitlines() if re.match(r"^\s+2\s", line)]
    assert lean_rank2 and all("n/a" in line for line in lean_rank2)  # tp init of rank 2 is unknown


def test_comparison_files_line(comparison, tmp_path):
    write_comparison(tmp_path / "cmp", comparison, headline_scenarios())
    assert f"files: {tmp_path / 'cmp'} (comparison.json" in rendered(render_comparison, comparison)


# --------------------------------------------------------------------------- CSV and JSON


def test_long_csv_golden(comparison, tmp_path):
    path = tmp_path / "out" / "readings.csv"
    write_csv(comparison, path)
    check_golden("readings_long.csv", path.read_text(encoding="utf-8"))


def test_summary_csv_golden(comparison, tmp_path):
    path = tmp_path / "summary.csv"
    write_summary_csv(comparison, path)
    check_golden("summary.csv", path.read_text(encoding="utf-8"))


def test_json_golden(tmp_path):
    """Schema 1 (``--json-schema 1``), byte for byte as memprobe wrote it before schema 2."""
    path = tmp_path / "comparison.json"
    write_json(small_comparison(), path, schema=1)
    check_golden("comparison_small.json", path.read_text(encoding="utf-8"))


def test_json_schema_2_golden(tmp_path):
    """Schema 2 is written compact (one line); its golden file is the same document indented, to be read."""
    path = tmp_path / "comparison.json"
    write_json(small_comparison(), path)
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 1 and text.endswith("\n")
    check_golden("comparison_small_v2.json", json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n")


def test_json_contents(comparison, tmp_path):
    path = tmp_path / "comparison.json"
    write_json(comparison, path, schema=1)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["schema_version"] == 1
    assert (document["comparison_id"], document["baseline"]) == ("synthetic", "tp4")
    assert [s["name"] for s in document["scenarios"]] == ["tp4", "tp4-ep2-full", "tp4-ep2-lean"]
    full = document["scenarios"][1]
    assert full["definition"]["stack"]["label"] == "full" and full["definition"]["layout"]["ep"] == 2
    assert full["definition"]["stack"]["resolved"]["groups"]["moe_ep"] == {"pynccl": True, "custom_allreduce": True}
    assert RunRecord.from_dict(full["run"]).run_id == "synthetic-tp4-ep2-full"
    assert full["components_by_rank"]["1"]["moe_ep/pynccl"] == 492 * MiB
    assert len(full["readings"]) == len(comparison.get("tp4-ep2-full").run.readings)


def _byte_columns(header: list[str]) -> list[str]:
    return [column for column in header if column.endswith("_bytes")]


@pytest.mark.parametrize("writer", [write_csv, write_summary_csv])
def test_csv_byte_columns_are_integers(writer, comparison, tmp_path):
    path = tmp_path / "out.csv"
    writer(with_missing(comparison), path)
    with path.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    columns = _byte_columns(list(rows[0]))
    assert columns
    empty = 0
    for row in rows:
        for column in columns:
            value = row[column]
            if value == "":
                empty += 1
            else:
                assert re.fullmatch(r"-?\d+", value), (column, value)  # never "1.0e9" or "1096810496.0"
    assert empty > 0  # the missing reading is an empty field, not 0
    import pandas as pd

    frame = pd.read_csv(path, dtype={column: "Int64" for column in columns})
    assert frame[columns[0]].dtype == "Int64"


def test_dataframe_columns_and_dtypes(comparison):
    long = long_dataframe(with_missing(comparison))
    assert tuple(long.columns) == LONG_COLUMNS
    for column in ("rank", "sequence", "primary_bytes", "added_bytes"):
        assert str(long[column].dtype) == "Int64"
    row = long[(long["scenario"] == "tp4") & (long["rank"] == 2) & (long["step"] == "custom_allreduce")
               & (long["group"] == "tp")]
    assert row["primary_bytes"].isna().all() and row["added_bytes"].isna().all()
    first = long[(long["scenario"] == "tp4") & (long["rank"] == 0) & (long["step"] == "pynccl") & (long["group"] == "tp")]
    assert int(first["added_bytes"].iloc[0]) == 484 * MiB

    summary = summary_dataframe(comparison)
    assert list(summary.columns) == summary_columns(comparison)
    assert list(summary.columns[:6]) == ["scenario", "stack", "layout", "rank", "cuda_context_bytes", "world_bytes"]
    assert {"tp_init_bytes", "moe_ep_init_bytes", "moe_tp_init_bytes"} <= set(summary.columns)
    worst = summary[summary["is_worst_rank"]]
    assert list(worst["rank"]) == [1, 1, 1]
    full1 = summary[(summary["scenario"] == "tp4-ep2-full") & (summary["rank"] == 1)].iloc[0]
    assert full1["delta_vs_baseline_bytes"] == 2032 * MiB
    tp4 = summary[summary["scenario"] == "tp4"]
    assert tp4["moe_tp_init_bytes"].isna().all()  # an alias of tp in tp4: no memory of its own, not 0


# --------------------------------------------------------------------------- Markdown


def test_markdown_golden(comparison, tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    path = tmp_path / "summary.md"
    write_markdown(comparison, path)
    text = path.read_text(encoding="utf-8")
    assert text == render_markdown(comparison)
    check_golden("summary.md", text)
    assert "&lt;group> init" in text  # would vanish as an HTML tag on GitHub


def test_markdown_appends_to_github_step_summary(comparison, tmp_path, monkeypatch):
    summary = tmp_path / "step_summary.md"
    summary.write_text("## earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write_markdown(comparison, tmp_path / "a.md")
    expected = render_markdown(comparison)
    assert summary.read_text(encoding="utf-8") == "## earlier step\n\n" + expected
    write_markdown(comparison, tmp_path / "b.md")
    assert summary.read_text(encoding="utf-8") == "## earlier step\n\n" + expected + "\n" + expected


def test_markdown_step_summary_created_when_absent(comparison, tmp_path, monkeypatch):
    summary = tmp_path / "fresh.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write_markdown(comparison, tmp_path / "a.md")
    assert summary.read_text(encoding="utf-8") == render_markdown(comparison)


# --------------------------------------------------------------------------- plot


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_writes_file(comparison, tmp_path, suffix):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install matplotlib)")
    path = tmp_path / f"plot{suffix}"
    write_plot(comparison, path)
    data = path.read_bytes()
    assert len(data) > 1000
    if suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert b"<svg" in data and b"MiB" in data


def test_plot_without_matplotlib_is_a_usage_error(comparison, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(UsageError, match=r"--plot needs matplotlib: pip install matplotlib \(the plot extra, 'memprobe-llm\[plot\]'\)"):
        write_plot(comparison, tmp_path / "plot.png")
    assert not (tmp_path / "plot.png").exists()


def test_plot_wrong_suffix(comparison, tmp_path):
    with pytest.raises(UsageError, match=r"\.png or \.svg"):
        write_plot(comparison, tmp_path / "plot.pdf")


def test_a_group_a_finished_run_never_built_does_not_make_first_use_unknown():
    """Real SGLang 0.5.10.post1 and 0.5.11 build no self_pp: their finished runs have no self_pp
    readings, and the first-use column still adds up what they built; a run that stopped early stays unknown."""
    from memprobe.reports._model import summarize

    scenario = Scenario(name="tp4-ep2-lean", layout=Layout(tp=4, ep=2, pp=2), stack="lean")
    run = synthetic_run(scenario)
    run.readings = [r for r in run.readings if r.group != "self_pp"]
    [summary] = summarize(Comparison("c", scenario.name, [ScenarioRun(scenario, run)]))
    assert all(rank.first_use is not None for rank in summary.ranks.values())
    stopped = synthetic_run(scenario)
    stopped.readings = [r for r in stopped.readings if r.step != "end" and r.group != "self_pp"]
    [summary] = summarize(Comparison("c", scenario.name, [ScenarioRun(scenario, stopped)]))
    assert all(rank.first_use is None for rank in summary.ranks.values())


def test_the_first_reading_of_an_unrecorded_measure_is_unknown_not_zero():
    """--device cpu records no torch-reserved bytes: the CSV's torch-cache columns are empty there, start row included."""
    from memprobe.analysis.attribution import step_deltas, torch_cache

    run = synthetic_run(Scenario(name="tp2", layout=Layout(tp=2), stack="lean"))
    from dataclasses import replace

    readings = [replace(r, torch_reserved_bytes=None) for r in run.readings if r.rank == 0]
    assert {delta for _, delta in step_deltas(readings, torch_cache)} == {None}
    assert step_deltas(readings)[0][1] == 0  # the primary measure is known: the first reading adds 0

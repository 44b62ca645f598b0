"""Rank classes: one summary per run (model/rank_table.py), the comparison JSON's schema 2 that stores each class once,
its reader (report, gate --results, api.load), the streamed CSV and the collapsed --per-rank table.

Unit level on committed results, estimates and synthetic runs; no torchrun launch."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from conftest import ROOT  # noqa: E402
from support import MiB, synthetic_comparison, synthetic_run  # noqa: E402

from memprobe import api  # noqa: E402
from memprobe.errors import DamagedInput  # noqa: E402
from memprobe.model import records  # noqa: E402
from memprobe.estimate.calibration import load_calibration, packaged_calibrations  # noqa: E402
from memprobe.estimate.check import check_run  # noqa: E402
from memprobe.model.comparison import load_comparison  # noqa: E402
from memprobe.model.run_files import load_run, write_run  # noqa: E402
from memprobe.engines.sglang.layout import SGLangLayout as Layout  # noqa: E402
from memprobe.model.rank_table import build_rank_table, classes_from_ranges, rank_text  # noqa: E402
from memprobe.model.scenario import Scenario  # noqa: E402
from memprobe.reports import exports, render_comparison, render_markdown, write_csv, write_json, write_summary_csv  # noqa: E402

RESULTS = ROOT / "results"
# one folder of each kind: a GPU comparison, NCCL settings, real SGLang, a fidelity pair (engines side by side),
# a one-GPU run, a run folder alone
COMMITTED = [
    "h200x4-20261127/compare-tp4-ep2",
    "h200x4-nccl-20261128",
    "h200x2-sglang-20261128",
    "sglang-fidelity-20261127",
    "h200x1-20261202/runs",
    "h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean",
]
BOUND_4096 = 10 * 1000 * 1000  # the 4096-rank JSON's size bound, bytes


def _folders(name: str) -> list[Path]:
    """The run or comparison folders under results/NAME (the folder itself when it is one)."""
    root = RESULTS / name
    if (root / "run.json").is_file() or (root / "comparison.json").is_file():
        return [root]
    comparisons = sorted(path.parent for path in root.rglob("comparison.json"))
    found = comparisons or sorted(path.parent for path in root.rglob("run.json"))
    return found[:2]


def _committed() -> list[Path]:
    return [folder for name in COMMITTED for folder in _folders(name)]


def _rendered(comparison, **options) -> str:
    stream = io.StringIO()
    render_comparison(comparison, stream, width=200, **options)
    lines = stream.getvalue().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("files: "))  # an export has no folder to name


def _without_folder(text: str) -> dict:
    """The document less what only the run folder holds: its path and NCCL's account (read from its NCCL logs)."""
    document = json.loads(text)
    for scenario in document["scenarios"]:
        scenario["run_path"] = scenario["nccl_account"] = None
    return document


# --------------------------------------------------------------------------- the rank table


def test_measured_ranks_that_read_alike_share_a_class_and_any_difference_splits_them():
    scenario = Scenario(name="tp4", layout=Layout(tp=4), stack="lean")
    run = synthetic_run(scenario, rank_extra={1: 8 * MiB, 3: -144 * MiB})  # ranks 0 and 2 read alike
    table = build_rank_table(run)
    assert [rank_class.ranks for rank_class in table.classes] == [[0, 2], [1], [3]]
    assert table.ranges() == [[0, 0, 0], [1, 1, 1], [2, 2, 0], [3, 3, 2]]
    later = [replace(r, elapsed_s=r.elapsed_s + 1) if (r.rank, r.step) == (2, "end") else r for r in run.readings]
    assert [c.ranks for c in build_rank_table(replace(run, readings=later)).classes] == [[0], [1], [2], [3]]


def test_an_estimate_keeps_its_classes():
    comparison = api.estimate(tp=8, pp=4, ep=4)
    run = comparison.runs[1].run
    table = build_rank_table(run)
    assert sorted(rank for c in table.classes for rank in c.ranks) == list(range(32))
    assert len(table.classes) == len(set(run.classes.values())) < 32


@pytest.mark.parametrize("ranks, text", [
    ([0], "0"), ([0, 1], "0-1"), ([0, 2], "0, 2"), ([0, 2, 4], "0, 2, 4"), ([0, 8, 16, 24], "0,8,...,24"),
    ([1, 2, 3, 5], "1-3, 5"), ([*range(17, 23), *range(25, 31), *range(33, 39), *range(41, 47), 50], "17-22,25-30,...,41-46, 50"),
])
def test_rank_text(ranks, text):
    assert rank_text(ranks) == text


@pytest.mark.parametrize("ranges, count, why", [
    ([[0, 2, 0]], 1, "rank 3 has no class"),
    ([[0, 3, 1]], 1, "names class 1, but there are 1"),
    ([[0, 3, 0], [3, 3, 0]], 1, "rank 3 is mapped twice"),
    ([[0, 4, 0]], 1, "outside the world of 4 ranks"),
    ([[0, 3, 0]], 2, "rank class 1 has no rank"),
    ([[0, 3]], 1, "is not [first, last, class]"),
    ({"0": 0}, 1, "must be a list"),
])
def test_a_damaged_rank_class_map_is_refused(ranges, count, why):
    with pytest.raises(DamagedInput, match=why.replace("[", r"\[").replace("]", r"\]")):
        classes_from_ranges(ranges, count, 4, "x.json")


# --------------------------------------------------------------------------- schema 2 and its reader


@pytest.mark.parametrize("folder", _committed(), ids=lambda path: str(path.relative_to(RESULTS)))
@pytest.mark.parametrize("schema", [1, 2])
def test_committed_results_round_trip_through_the_json_export(folder, schema, tmp_path):
    comparison = load_comparison(folder)
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    write_json(comparison, first, schema=schema)
    again = load_comparison(first)
    write_json(again, second, schema=schema)
    assert _without_folder(second.read_text()) == _without_folder(first.read_text())
    assert _rendered(again, per_rank=True, all_ranks=True) == _rendered(comparison, per_rank=True, all_ranks=True)
    assert render_markdown(again) == render_markdown(comparison)
    for writer in (write_csv, write_summary_csv):
        writer(comparison, tmp_path / "a.csv")
        writer(again, tmp_path / "b.csv")
        assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


@pytest.mark.parametrize("schema", [1, 2])
def test_an_estimate_round_trips_with_its_classes(schema, tmp_path):
    comparison = api.estimate(tp=8, pp=8, ep=4)  # 64 ranks on 8 nodes
    path = tmp_path / "e.json"
    write_json(comparison, path, schema=schema)
    again = api.load(path)
    assert [item.run.record.source for item in again.runs] == ["estimated"] * 3
    assert _rendered(again, per_rank=True) == _rendered(comparison, per_rank=True)
    assert [r.__dict__ for r in again.runs[2].run.record.ranks] == [r.__dict__ for r in comparison.runs[2].run.record.ranks]
    write_csv(comparison, tmp_path / "a.csv")
    write_csv(again, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_schema_2_stores_each_class_and_each_layout_once(tmp_path):
    comparison = api.estimate(tp=8, pp=8, ep=4)
    write_json(comparison, tmp_path / "two.json")
    write_json(comparison, tmp_path / "one.json", schema=1)
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["schema_version"] == 2 and sorted(two["plans"]) == ["tp8-ep4-pp8", "tp8-pp8"]  # full and lean share one
    for scenario, item in zip(two["scenarios"], comparison.runs):
        assert len(scenario["classes"]) == len(set(item.run.classes.values()))
        assert sum(entry["ranks"] for entry in scenario["classes"]) == 64
        assert set(scenario["rank_info_columns"]) == {"device", "host", "local_rank"}
    assert (tmp_path / "two.json").stat().st_size * 4 < (tmp_path / "one.json").stat().st_size  # 64 ranks, 6 to 8 classes


def test_the_4096_rank_json_stays_under_its_size_bound(tmp_path):
    """memprobe estimate --tp 8 --pp 512 --ep 4 --json: 281 MB in schema 1; the bound is 10 MB (size, not time)."""
    path = tmp_path / "e.json"
    write_json(api.estimate(tp=8, pp=512, ep=4), path)
    assert path.stat().st_size < BOUND_4096


def test_the_csv_is_streamed_in_chunks_and_reads_as_pandas_writes(tmp_path, monkeypatch):
    chunks: list[int] = []
    original = records.atomic_write_lines

    def counting(path, lines):
        def counted():
            for chunk in lines:
                chunks.append(len(chunk))
                yield chunk
        original(path, counted())

    monkeypatch.setattr(exports, "atomic_write_lines", counting)
    comparison = api.estimate(tp=8, pp=64, ep=4)  # 512 ranks: about 11 MB of CSV
    write_csv(comparison, tmp_path / "long.csv")
    size = (tmp_path / "long.csv").stat().st_size
    assert len(chunks) > 5 and max(chunks) < 2 * (1 << 20) < size and sum(chunks) == size
    small = synthetic_comparison(rank_extra={1: 8 * MiB, 3: -144 * MiB})
    write_csv(small, tmp_path / "small.csv")
    write_summary_csv(small, tmp_path / "summary.csv")
    pandas_long = exports.long_dataframe(small).to_csv(index=False, lineterminator="\n")
    pandas_summary = exports.summary_dataframe(small).to_csv(index=False, lineterminator="\n")
    assert (tmp_path / "small.csv").read_text() == pandas_long
    assert (tmp_path / "summary.csv").read_text() == pandas_summary


# --------------------------------------------------------------------------- readings.csv of ranks that read alike


def _alike_run(tmp_path: Path) -> tuple[Path, "records.Run"]:
    """A folder of a tp 8 run whose ranks 1, 5 and 6 differ: classes {0, 2, 3, 4, 7}, {1, 5}, {6}."""
    run = synthetic_run(Scenario(name="tp8", layout=Layout(tp=8), stack="lean"),
                        rank_extra={1: 8 * MiB, 5: 8 * MiB, 6: -MiB})
    write_run(tmp_path / "tp8", run.record, run.readings)
    return tmp_path / "tp8", run


def _by_rank(readings) -> list:
    return sorted(readings, key=lambda r: (r.rank, r.sequence))


def test_a_measured_run_holds_each_class_of_ranks_that_read_alike_once(tmp_path):
    folder, run = _alike_run(tmp_path)
    loaded = load_run(folder)
    steps = len(run.readings) // 8
    assert loaded.classes == {0: 0, 1: 1, 2: 0, 3: 0, 4: 0, 5: 1, 6: 6, 7: 0}
    assert len(loaded.readings) == 3 * steps  # one parse per class, not per rank
    assert _by_rank(loaded.all_readings()) == _by_rank(run.readings)
    assert [c.ranks for c in build_rank_table(loaded).classes] == [[0, 2, 3, 4, 7], [1, 5], [6]]
    comparison = load_comparison(folder)
    row_by_row = replace(comparison.runs[0].run, readings=run.readings, classes={})
    object.__delattr__(row_by_row, "_rank_table") if hasattr(row_by_row, "_rank_table") else None
    again = replace(comparison, runs=[replace(comparison.runs[0], run=row_by_row)])
    for options in ({}, {"per_rank": True}, {"per_rank": True, "all_ranks": True}):
        assert _rendered(comparison, **options) == _rendered(again, **options)
    write_csv(comparison, tmp_path / "a.csv")
    write_csv(again, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def _rewritten(folder: Path, change) -> str:
    """readings.csv's text after ``change(header, rows)`` (rows as lines, without their line ends)."""
    lines = (folder / "readings.csv").read_text().splitlines()
    text = change(lines[0], lines[1:])
    (folder / "readings.csv").write_text(text, newline="")
    return text


@pytest.mark.parametrize("change", [
    lambda header, rows: "\n".join([header, *sorted(rows, key=lambda row: int(row.split(",")[1]))]) + "\n",  # by step
    lambda header, rows: "\r\n".join([header, *rows]) + "\r\n",
    lambda header, rows: "\n".join([header, *rows]),  # no line end at the end
    lambda header, rows: "\n".join([header, *rows[:40], "", *rows[40:]]) + "\n",  # a blank line
], ids=["interleaved", "crlf", "no-last-line-end", "blank-line"])
def test_a_readings_file_in_another_order_or_form_reads_row_by_row(tmp_path, change):
    folder, run = _alike_run(tmp_path)
    readings, classes = records.readings_by_class_from_csv(_rewritten(folder, change))
    assert classes == {} and _by_rank(readings) == _by_rank(run.readings)


def test_a_quoted_line_end_that_looks_like_a_rank_reads_row_by_row(tmp_path):
    """A note of rank R holding a line end and "R," (its continuation line starts as R's rows do)."""
    folder, run = _alike_run(tmp_path)
    notes = [replace(r, note=f"two\n{r.rank},lines") if r.step == "end" else r for r in run.readings]
    write_run(folder, run.record, notes)
    loaded = load_run(folder)
    assert _by_rank(loaded.all_readings()) == _by_rank(notes)


@pytest.mark.parametrize("damage, why", [
    (lambda line: line.replace(",ok,", ",ok,-5,", 1).rsplit(",", 1)[0], "column primary_bytes must be a whole number of bytes >= 0"),
    (lambda line: line.split(",", 1)[1], "wrong number of columns"),  # its rank number lost: the rest reads as rank 0's
], ids=["negative-bytes", "no-rank-number"])
def test_damage_in_a_rank_that_reads_alike_is_named_by_its_line(tmp_path, damage, why):
    folder, run = _alike_run(tmp_path)
    lines = (folder / "readings.csv").read_text().splitlines()
    number = next(n for n, line in enumerate(lines, 1) if line.startswith("7,") and ",pynccl," in line)
    lines[number - 1] = damage(lines[number - 1])
    (folder / "readings.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DamagedInput, match=f"readings.csv:{number}: {why}"):
        load_run(folder)


@pytest.mark.parametrize("change, why", [
    (lambda rows: [row for row in rows if not row.startswith("3,")], "no readings of rank 3"),
    (lambda rows: [row for row in rows if not (row.startswith("4,") and ",end," in row)], "rank 4 has no reading of end"),
    (lambda rows: rows + [f"8,{row.split(',', 1)[1]}" for row in rows if row.startswith("0,")], "rank 8 is outside"),
], ids=["a-rank", "a-step-of-an-alike-rank", "an-alike-rank-outside-the-world"])
def test_a_run_that_says_complete_without_every_rank_or_step_is_damaged(tmp_path, change, why):
    folder, _ = _alike_run(tmp_path)
    _rewritten(folder, lambda header, rows: "\n".join([header, *change(rows)]) + "\n")
    with pytest.raises(DamagedInput, match=why):
        load_run(folder)


def test_estimate_check_compares_every_rank_of_a_run_whose_ranks_read_alike(tmp_path):
    """An estimate written out as a measured run folder (as bench/exports_bench.py makes its measured runs): checked
    against itself, every rank of it, each within 0 bytes."""
    item = api.estimate(tp=8, pp=2, ep=2, nccl="2.28.9").runs[1]  # the calibration's NCCL, whatever torch is here
    record = replace(item.run.record, source="measured", environment={**item.run.record.environment, "sampling_mode": "process"})
    record.environment.pop("estimate", None)
    write_run(tmp_path / "run", record, item.run.all_readings())
    run = load_run(tmp_path / "run")
    assert 1 < len(set(run.classes.values())) < 16
    calibrations = {c.gpu_model: c for c in map(load_calibration, packaged_calibrations())}
    result = check_run("run", run, calibrations.get)
    assert not result.skipped
    assert sorted({total.rank for total in result.totals}) == list(range(16))
    assert all(total.error == 0 for total in result.totals) and len(result.totals) == 32


# --------------------------------------------------------------------------- the commands


def _export(tmp_path: Path, folder: str = "h200x4-20261127/compare-tp4-ep2") -> Path:
    path = tmp_path / "c.json"
    write_json(load_comparison(RESULTS / folder), path)
    return path


def _damage(path: Path, change) -> Path:
    document = json.loads(path.read_text())
    change(document["scenarios"][0])
    path.write_text(json.dumps(document))
    return path


def test_report_reads_a_json_export_as_it_reads_the_folder(memprobe, tmp_path):
    folder = RESULTS / "h200x4-20261127/compare-tp4-ep2"
    from_folder = memprobe("report", str(folder), "--per-rank", env={"COLUMNS": "200"})
    from_json = memprobe("report", str(_export(tmp_path)), "--per-rank", env={"COLUMNS": "200"})
    assert (from_folder.returncode, from_json.returncode) == (0, 0), from_json.stderr
    assert from_json.stdout == "".join(line for line in from_folder.stdout.splitlines(keepends=True)
                                       if not line.startswith("files: "))


@pytest.mark.parametrize("change, why", [
    (lambda s: s["rank_classes"].pop(), "rank 3 has no class"),
    (lambda s: s["rank_classes"][0].__setitem__(2, 7), "names class 7"),
])
def test_report_and_gate_refuse_a_damaged_rank_class_map(memprobe, tmp_path, change, why):
    damaged = _damage(_export(tmp_path, "h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean"), change)
    report = memprobe("report", str(damaged))
    gate = memprobe("gate", "--baseline", str(ROOT / "configs/baselines/h200x4-tp4-ep2-lean.json"), "--results", str(damaged))
    for result in (report, gate):
        assert result.returncode == 2, result.stdout + result.stderr
        assert why in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_gate_judges_a_json_export_as_the_folder(memprobe, tmp_path):
    baseline = str(ROOT / "configs/baselines/h200x4-tp4-ep2-lean.json")
    folder = RESULTS / "h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean"
    from_folder = memprobe("gate", "--baseline", baseline, "--results", str(folder))
    from_json = memprobe("gate", "--baseline", baseline, "--results", str(_export(tmp_path, "h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean")))
    assert from_folder.returncode == from_json.returncode == 0, from_json.stderr
    tight = memprobe("gate", "--baseline", baseline, "--results", str(tmp_path / "c.json"),
                     "--threshold", "metric=total_after_first_use,max=1MiB")
    assert tight.returncode == 1  # the export's readings are judged, not waved through


def test_json_schema_option(memprobe, tmp_path):
    bad = memprobe("estimate", "--tp", "4", "--json", "e.json", "--json-schema", "3")
    assert bad.returncode == 2 and bad.stderr.strip() == "memprobe: error: --json-schema must be 1 or 2, got 3"
    assert not (tmp_path / "e.json").exists()
    one = memprobe("estimate", "--tp", "4", "--ep", "2", "--json", "one.json", "--json-schema", "1")
    two = memprobe("estimate", "--tp", "4", "--ep", "2", "--json", "two.json")
    assert (one.returncode, two.returncode) == (0, 0)
    assert json.loads((tmp_path / "one.json").read_text())["schema_version"] == 1
    assert json.loads((tmp_path / "two.json").read_text())["schema_version"] == 2


def test_per_rank_collapses_alike_ranks_and_all_ranks_shows_each(memprobe):
    # the calibration's NCCL: another installed NCCL lengthens the title past one line of 200 columns
    layout = ("estimate", "--tp", "8", "--pp", "4", "--ep", "4", "--nccl", "2.28.9", "--per-rank")
    collapsed = memprobe(*layout, env={"COLUMNS": "200"})
    every = memprobe(*layout, "--all-ranks", env={"COLUMNS": "200"})
    assert (collapsed.returncode, every.returncode) == (0, 0), collapsed.stderr
    assert "one row per rank class (ranks that read alike)" in collapsed.stdout
    assert "one row per rank," in every.stdout and "--all-ranks shows" not in every.stdout
    assert "16, 24" in collapsed.stdout and "17-22, 25-30" in collapsed.stdout  # nodes 2 and 3 of the last pp stage
    assert len(every.stdout.splitlines()) > len(collapsed.stdout.splitlines()) + 50

"""Fidelity report (reference engine against real SGLang): synthetic pairs for the logic, committed GPU runs
for what docs/attribution.md says of them.

Synthetic SGLang runs copy the reference engine's and then add what pass 1 on 4 x H200 found
(results/sglang-fidelity-20261127/x4-before-fix): a 2 MiB torch cache segment per pynccl warm-up stream,
released by the ``empty_cache`` after the world group's first collective.

Regenerate the golden file after an intended change with::

    MEMPROBE_UPDATE_GOLDEN=1 PYTHONPATH=. python -m pytest tests/test_fidelity.py -q
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import MiB, headline_scenarios, synthetic_run  # noqa: E402

from memprobe.analysis.attribution import TOTAL_AFTER_FIRST_USE, components_by_rank  # noqa: E402
from memprobe.model.comparison import load_comparison  # noqa: E402
from memprobe.reports.exports import comparison_document  # noqa: E402
from memprobe.reports.fidelity import differences, fidelity_document, pairs, render_fidelity  # noqa: E402
from memprobe.model.records import Run  # noqa: E402
from memprobe.model.comparison import Comparison, ScenarioRun  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
COMMITTED = ROOT / "results" / "sglang-fidelity-20261127"


def _with_stream_segments(run: Run, segment: int = 2 * MiB) -> Run:
    """``run`` as SGLang 0.5.23 reads it: each pynccl step keeps one more torch cache segment, until the
    world group's first use empties the cache."""
    readings = []
    held: dict[int, int] = {}
    for reading in sorted(run.readings, key=lambda r: (r.rank, r.sequence)):
        if reading.step == "pynccl" and reading.status == "ok":
            held[reading.rank] = held.get(reading.rank, 0) + segment
        if reading.step == "first_use" and reading.group == "world":
            held[reading.rank] = 0
        extra = held.get(reading.rank, 0)
        readings.append(replace(reading, primary_bytes=reading.primary_bytes + extra,
                                process_bytes=reading.process_bytes + extra,
                                torch_reserved_bytes=reading.torch_reserved_bytes + extra))
    return Run(record=run.record, readings=readings)


def _engines(transform=lambda run: run) -> Comparison:
    runs = []
    for scenario in headline_scenarios().scenarios:
        runs.append(ScenarioRun(scenario=scenario, run=synthetic_run(scenario)))
        sglang = replace(scenario, name=f"{scenario.name}.sglang", engine="sglang")
        runs.append(ScenarioRun(scenario=sglang, run=transform(synthetic_run(sglang))))
    return Comparison(comparison_id="engines", baseline="tp4", runs=runs)


def _render(comparison: Comparison) -> str:
    stream = io.StringIO()
    render_fidelity(comparison, stream)
    return stream.getvalue()


def test_pairs_match_each_scenario_with_its_sglang_twin():
    comparison = _engines()
    assert [(a.scenario.name, b.scenario.name) for a, b in pairs(comparison)] == [
        ("tp4", "tp4.sglang"), ("tp4-ep2-full", "tp4-ep2-full.sglang"), ("tp4-ep2-lean", "tp4-ep2-lean.sglang")]


def test_equal_engines_are_within_tolerance_everywhere():
    comparison = _engines()
    text = _render(comparison)
    assert text.count("every rank, group and step within 2 MiB") == 3
    assert "beyond" not in text and "caching allocator" not in text
    assert all(entry["within_tolerance"] for entry in fidelity_document(comparison))


def test_stream_cache_segments_are_found_and_attributed_to_torch_cache():
    comparison = _engines(_with_stream_segments)
    text = _render(comparison)
    golden = GOLDEN / "fidelity_stream_segments.txt"
    if os.environ.get("MEMPROBE_UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8", newline="")
    assert text == golden.read_text(encoding="utf-8")
    # full: three pynccl communicators, so the world group's first use differs by 6 MiB, beyond tolerance
    assert "beyond 2 MiB: world/first_use (6.0 MiB, all of it torch's cache)" in text
    full = {(d.group, d.step): d for d in differences(*pairs(comparison)[1])}
    assert full[("moe_ep", "pynccl")].largest == 2 * MiB and full[("moe_ep", "pynccl")].all_in_torch_cache
    assert full[("world", "first_use")].largest == 6 * MiB
    assert full[("tp", "custom_allreduce")].largest == 0 and not full[("tp", "custom_allreduce")].all_in_torch_cache
    assert [entry["within_tolerance"] for entry in fidelity_document(comparison)] == [True, False, True]


def test_a_difference_outside_torch_cache_is_not_explained_away():
    def extra_workspace(run: Run) -> Run:
        readings = []
        for reading in run.readings:
            bump = 4 * MiB if reading.sequence >= _sequence_of(run, reading.rank, "moe_ep", "custom_allreduce") else 0
            readings.append(replace(reading, primary_bytes=reading.primary_bytes + bump))
        return Run(record=run.record, readings=readings)

    text = _render(_engines(extra_workspace))
    assert "beyond 2 MiB: moe_ep/custom_allreduce (4.0 MiB)" in text
    assert "all of it torch's cache" not in text


def _sequence_of(run: Run, rank: int, group: str, step: str) -> int:
    return next(r.sequence for r in run.readings if r.rank == rank and r.group == group and r.step == step)


def test_a_step_only_one_engine_took_is_reported():
    def extra_step(run: Run) -> Run:
        last = max(r.sequence for r in run.readings)
        added = [replace(r, sequence=last + 1, step="message_queue", group="tp")
                 for r in run.readings if r.step == "end"]
        return Run(record=run.record, readings=[*run.readings, *added])

    assert "tp/message_queue (only in SGLang)" in _render(_engines(extra_step))


def test_json_export_carries_the_fidelity_report_only_for_engine_pairs():
    document = comparison_document(_engines(_with_stream_segments))
    entry = document["fidelity"][1]
    assert entry["reference"] == "tp4-ep2-full" and entry["tolerance_bytes"] == 2 * MiB
    step = next(s for s in entry["steps"] if (s["group"], s["step"]) == ("moe_tp", "pynccl"))
    assert {int(v) for v in step["installed_bytes"].values()} == {484 * MiB + 2 * MiB}
    assert entry["installed"] == "tp4-ep2-full.sglang" and not any("sglang" in key for key in entry)
    assert step["all_in_torch_cache"] is True
    json.dumps(document)  # serialisable as is


def test_the_schema_takes_the_fidelity_entry_under_its_engine_neutral_names_and_an_earlier_memprobe_s():
    jsonschema = pytest.importorskip("jsonschema", reason="the dev extra installs jsonschema: pip install -e '.[dev]'")
    schema = json.loads((ROOT / "docs" / "schema" / "comparison.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    document = json.loads(json.dumps(comparison_document(_engines(_with_stream_segments))))
    assert not list(validator.iter_errors(document))
    old_names = {"installed": "sglang", "installation": "sglang_installation", "installed_bytes": "sglang_bytes",
                 "installed_torch_cache_bytes": "sglang_torch_cache_bytes"}

    def renamed(value):  # an export as memprobe wrote it before the names were engine-neutral
        if isinstance(value, dict):
            return {old_names.get(key, key): renamed(item) for key, item in value.items()}
        return [renamed(item) for item in value] if isinstance(value, list) else value

    earlier = {**document, "fidelity": renamed(document["fidelity"])}
    assert "sglang_bytes" in earlier["fidelity"][0]["steps"][0] and not list(validator.iter_errors(earlier))
    del earlier["fidelity"][0]["sglang"]  # neither naming: refused
    assert list(validator.iter_errors(earlier))
    one_engine = Comparison("x", "tp4", [ScenarioRun(s, synthetic_run(s)) for s in headline_scenarios().scenarios])
    assert "fidelity" not in comparison_document(one_engine)


# ------------------------------------------------------------------------------- committed GPU runs

@pytest.mark.parametrize("folder, names, gpu", [
    ("x2/compare-tp2-ep2-engines", ("tp2", "tp2-ep2-full", "tp2-ep2-lean"), "NVIDIA H200"),
    ("x4/compare-tp4-ep2-engines", ("tp4", "tp4-ep2-full", "tp4-ep2-lean"), "NVIDIA H100 80GB HBM3"),
])
def test_committed_fidelity_after_the_stream_fix_is_within_tolerance(folder, names, gpu):
    comparison = load_comparison(COMMITTED / folder)
    found = pairs(comparison)
    assert [reference.scenario.name for reference, _ in found] == list(names)
    for reference, sglang in found:
        assert sglang.run.record.environment["gpu_model"] == gpu
        assert sglang.run.record.environment["sglang"] == "0.5.23" and sglang.run.record.engine == "sglang"
        for difference in differences(reference, sglang):
            assert difference.reference_bytes and difference.installed_bytes, (difference.group, difference.step)
            assert difference.largest is not None and difference.largest <= 2 * MiB, (difference.group, difference.step)
    assert all(entry["within_tolerance"] for entry in fidelity_document(comparison))


def test_committed_fidelity_before_the_stream_fix_differs_only_in_torch_cache():
    comparison = load_comparison(COMMITTED / "x4-before-fix" / "compare-tp4-ep2-engines")
    for reference, sglang in pairs(comparison):
        for difference in differences(reference, sglang):
            if difference.largest:
                assert difference.all_in_torch_cache, (reference.scenario.name, difference.group, difference.step)
                assert difference.step == "pynccl" or (difference.group, difference.step) == ("world", "first_use")
        left, right = components_by_rank(reference.run), components_by_rank(sglang.run)
        assert {rank: right[rank][TOTAL_AFTER_FIRST_USE] - parts[TOTAL_AFTER_FIRST_USE]
                for rank, parts in left.items()} == {0: 0, 1: 0, 2: 0, 3: 0}


def test_report_prints_the_committed_fidelity_report(memprobe):
    result = memprobe("report", str(COMMITTED / "x2" / "compare-tp2-ep2-engines"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("every rank, group and step within 2 MiB") == 3

"""A communicator that failed to build reads 0 MiB like a cheap one: the run table, the comparison table and the
Markdown export say which step failed, on how many ranks, and the first error.

Input: a committed H200 comparison (two socket nodes, vLLM's reference stack) whose every scenario recorded
``tp/symm_mem: "failed: CUDASymmetricMemoryAllocator::rendezvous: ..."`` on both ranks."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

from memprobe.model.comparison import load_comparison
from memprobe.model.run_files import load_run
from memprobe.reports import render_comparison, render_markdown, render_run
from memprobe.reports.failed_builds import ERROR_CHARS, comparison_notes, run_notes

ROOT = Path(__file__).resolve().parents[1]
COMPARISON = (ROOT / "results/h200x1-socket-nodes-vllm-ref-20261204/tp2-moe-nodes2-cumemdefault/node0/runs"
              / "tp2-moe-nodes2-cumemdefault")
ERROR_START = "CUDASymmetricMemoryAllocator::rendezvous: detected allocations"


def _lines_with(text: str, needle: str) -> list[str]:
    """The notes that hold ``needle``, each on one line again (a console of fixed width wraps long notes)."""
    return [" ".join(note.split()) for note in text.replace("\n", " ").split(needle)[1:]]


def test_the_committed_runs_record_the_failure():
    """The premise: run.json says the build failed on both ranks (else the tests below prove nothing)."""
    record = json.loads((COMPARISON / "tp2-moe-vllm" / "run.json").read_text())
    words = [rank["communicators"]["tp"]["symm_mem"] for rank in record["ranks"]]
    assert len(words) == 2 and all(word.startswith("failed: " + ERROR_START) for word in words)


def test_run_report_names_the_failed_step_its_ranks_and_error():
    for per_rank in (False, True):
        stream = io.StringIO()
        render_run(load_run(COMPARISON / "tp2-moe-vllm"), stream, per_rank=per_rank)
        lines = _lines_with(stream.getvalue(), "failed to build")
        assert len(lines) == 1, stream.getvalue()
        assert ": tp/symm_mem on 2 of 2 ranks: " + ERROR_START in lines[0]


def test_failed_on_some_ranks_counts_them_and_quotes_the_first():
    run = load_run(COMPARISON / "tp2-moe-vllm")
    first, second = run.record.ranks
    built = replace(first, communicators={**first.communicators,
                                          "tp": {**first.communicators["tp"], "symm_mem": "built"}})
    second = replace(second, communicators={**second.communicators,
                                            "tp": {**second.communicators["tp"], "symm_mem": "failed: " + "x" * 300}})
    notes = run_notes(replace(run, record=replace(run.record, ranks=[built, second])))
    assert len(notes) == 1 and "tp/symm_mem on 1 of 2 ranks: " in notes[0]
    error = notes[0].rsplit(": ", 1)[1]
    assert error.startswith("xxx") and error.endswith("…") and len(error) == ERROR_CHARS


def test_a_run_without_failures_has_no_such_line():
    run = load_run(COMPARISON / "tp2-moe-vllm")
    clean = [replace(info, communicators={group: {kind: ("built" if word.startswith("failed") else word)
                                                  for kind, word in kinds.items()}
                                          for group, kinds in info.communicators.items()})
             for info in run.record.ranks]
    assert run_notes(replace(run, record=replace(run.record, ranks=clean))) == []


def test_comparison_table_and_markdown_name_the_failed_step():
    comparison = load_comparison(COMPARISON)
    stream = io.StringIO()
    render_comparison(comparison, stream)
    markdown = render_markdown(comparison)
    for text in (stream.getvalue(), markdown):
        lines = _lines_with(text, "failed to build")
        assert len(lines) == 1, text
        assert ": tp/symm_mem on 2 of 2 ranks of every scenario: " + ERROR_START in lines[0]


def test_comparison_names_the_scenarios_a_step_failed_in():
    comparison = load_comparison(COMPARISON)
    runs = [(item.scenario.name, item.run) for item in comparison.runs]
    notes = comparison_notes(runs[:1] + [(name, replace(run, record=replace(run.record, ranks=[]))) for name, run in runs[1:]])
    assert len(notes) == 1 and f"on 2 of 2 ranks of {runs[0][0]}: " in notes[0]

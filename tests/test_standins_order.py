"""The note naming what an installed engine's import chain could not import reads the same whatever order the
modules were first imported in (ranks and runs import them in different orders)."""

from __future__ import annotations

import sys

from memprobe.engines import standins
from memprobe.engines.sglang import standins as sglang_standins


def _note_after_importing(monkeypatch, order: list[str]) -> tuple[list[str], str]:
    finder = standins.HollowFinder(order)
    monkeypatch.setattr(sys, "meta_path", [finder])
    for name in order:
        finder.find_spec(name)
    return standins.stood_in(), sglang_standins.note()


def test_the_stand_in_note_names_the_modules_in_one_order(monkeypatch):
    first = _note_after_importing(monkeypatch, ["triton", "tvm_ffi", "flashinfer"])
    second = _note_after_importing(monkeypatch, ["flashinfer", "triton", "tvm_ffi"])
    assert first == second
    assert first[0] == ["flashinfer", "triton", "tvm_ffi"] and "import flashinfer, triton, tvm_ffi here" in first[1]

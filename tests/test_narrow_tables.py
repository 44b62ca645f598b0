"""What a comparison's table gives up to fit a narrow terminal: generic columns first, then each engine's own
groups (Engine.narrow_table_drops), never another engine's group names."""

from __future__ import annotations

import io

from memprobe import api, engines
from memprobe.reports.compare_table import headline_drop_order, render_comparison


def _vllm_estimate():
    return api.estimate(tp=2, pp=2, dp=2, dcp=2, moe=True, engine="vllm-ref")


def test_a_vllm_table_gives_up_vllm_s_own_group_columns_and_keeps_tp_and_ep():
    out = io.StringIO()
    render_comparison(_vllm_estimate(), out, width=80)
    text = out.getvalue()
    note = " ".join(text[text.index("left out to fit 80 columns"):].split("(a wider")[0].split())
    assert "dp init" in note and "pp init" in note and "dcp init" in note, text
    header = text[text.index("2^20 bytes"):text.index("────")]  # the column headers
    assert "tp init" in header and "ep init" in header and "dcp" not in header, text


def test_the_drop_order_names_only_the_compared_engines_groups():
    order = headline_drop_order(_vllm_estimate())
    assert order[-5:] == ("dp init", "pp init", "pcp init", "dcp init", "etp init")
    assert not any(name.startswith(("moe_", "attn", "attention", "self_pp")) for name in order)
    sglang = engines.get("sglang-ref").engine
    assert set(sglang.narrow_table_drops()) <= set(sglang.group_order) - set(sglang.highlighted_groups)


VLLM_WIDE = ("estimate", "--engine", "vllm-ref", "--tp", "2", "--pp", "2", "--dp", "2", "--dcp", "2", "--pcp", "2",
             "--moe", "--enable-eplb", "--enable-expert-parallel")


def test_a_pipe_gets_each_title_and_note_on_one_line_and_the_same_tables_as_200_columns(memprobe):
    piped = memprobe(*VLLM_WIDE, env={"COLUMNS": ""})
    columns = memprobe(*VLLM_WIDE, env={"COLUMNS": "200"})
    assert piped.returncode == 0 and columns.returncode == 0, piped.stderr + columns.stderr
    title = piped.stdout.splitlines()[0]
    assert len(title) > 200 and title.startswith("comparison ") and title.endswith("MiB = 2^20 bytes"), title
    wrapped = columns.stdout.splitlines()
    assert len(wrapped[0]) <= 200 and wrapped[1].endswith("MiB = 2^20 bytes")  # a terminal's width wraps it
    table_lines = [line for line in wrapped if "│" in line or "─" in line or line.startswith("tp2-")]
    assert table_lines and all(line in piped.stdout.splitlines() for line in table_lines)

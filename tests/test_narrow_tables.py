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

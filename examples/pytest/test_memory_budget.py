"""What an engine's CI writes: per-rank memory budgets, asserted through memprobe's Python API, on CPU.

Four checks, no GPU needed:

* the engine's OWN code: the installed SGLang (``MEMPROBE_EXAMPLE_SGLANG``: a site folder from
  ``pip install --no-deps --target SITE sglang==X``, or SGLang's checkout's ``python``) runs its
  ``initialize_model_parallel`` on CPU, and its MoE groups ask for no pynccl communicator nor custom all-reduce
  (on SGLang 0.5.10.post1, before PR #22515, this fails; skipped where no SGLang is given);
* the same for vLLM (``MEMPROBE_EXAMPLE_VLLM``: a site folder from ``pip install --no-deps --target SITE vllm==X``,
  or vLLM's checkout): its own ``ensure_model_parallel_initialized`` runs on CPU, and at ``--tp 2`` of a MoE model,
  where the EP group's ranks are TP's, the EP group builds no PyNccl communicator of its own. That is the proposed
  shared-ep change (``examples/vllm/shared-ep-0.33.0.patch``): on stock vLLM 0.33.0 this fails;
* the *estimate* (NCCL's rules and the packaged H200 calibration) of ``--tp 8 --ep 4`` with the stack the
  engine ships: every rank's total once every group has run its first collective stays under a budget;
* a real ``--device cpu --tp 2 --ep 2`` launch (torchrun, gloo groups) of memprobe's reproduction: the MoE groups
  are built without pynccl communicators, as the stack says (memprobe's model of the engine, not its code).

Run it with ``pytest examples/pytest/test_memory_budget.py``. The knobs an engine would hard-code are read
from the environment here, so that memprobe's own suite can break them on purpose:
``MEMPROBE_EXAMPLE_BUDGET_GIB`` (default 5) and ``MEMPROBE_EXAMPLE_STACK`` (default ``lean``).
"""

from __future__ import annotations

import os

import pytest

from memprobe import api
from memprobe.units import GIB

BUDGET_BYTES = int(float(os.environ.get("MEMPROBE_EXAMPLE_BUDGET_GIB", "5")) * GIB)
STACK = os.environ.get("MEMPROBE_EXAMPLE_STACK", "lean")
SGLANG_SITE = os.environ.get("MEMPROBE_EXAMPLE_SGLANG", "")
VLLM_SITE = os.environ.get("MEMPROBE_EXAMPLE_VLLM", "")
MOE_GROUPS = ("moe_ep", "moe_tp")  # the expert groups SGLang 0.5.23 builds without pynccl (an alias of tp is not built)


@pytest.mark.skipif(not SGLANG_SITE, reason="set MEMPROBE_EXAMPLE_SGLANG to an SGLang site folder or checkout's python/")
def test_the_engine_s_own_moe_groups_build_no_communicators_of_their_own():
    comparison = api.estimate(tp=4, ep=2, engine="sglang", sglang=SGLANG_SITE, progress=False)  # its code, on CPU
    moe = comparison.names()[-1]
    for rank, groups in api.communicators(comparison, moe).items():
        built = {f"{group}/{kind}": state for group in MOE_GROUPS for kind, state in groups[group].items()
                 if state.startswith("built")}
        assert not built, f"rank {rank}: the installed SGLang's MoE groups build {built}"


@pytest.mark.skipif(not VLLM_SITE, reason="set MEMPROBE_EXAMPLE_VLLM to a vLLM site folder or vLLM's checkout")
def test_the_engine_s_own_ep_group_reuses_tp_s_pynccl():
    comparison = api.estimate(tp=2, moe=True, engine="vllm", vllm=VLLM_SITE, progress=False)  # its code, on CPU
    for rank, groups in api.communicators(comparison).items():
        pynccl = groups["ep"]["pynccl"]
        assert not pynccl.startswith("built"), f"rank {rank}: the installed vLLM's EP group builds its own PyNccl ({pynccl})"


def test_every_rank_of_the_estimate_fits_the_budget():
    comparison = api.estimate(tp=8, ep=4, stacks=STACK)
    assert api.is_estimate(comparison)  # an estimate, never a measurement: say so where it is used
    moe = comparison.names()[-1]  # the baseline --tp 8 comes first, then the MoE layout with the stack
    totals = api.total_after_first_use(comparison, moe)
    assert sorted(totals) == list(range(8))
    over = {rank: f"{total / GIB:.2f} GiB" for rank, total in totals.items() if total > BUDGET_BYTES}
    assert not over, f"{moe}: estimated ranks over {BUDGET_BYTES / GIB:.2f} GiB: {over}"


def test_the_moe_groups_build_no_pynccl(tmp_path):
    launch = api.LaunchOptions(device="cpu", out_dir=tmp_path, progress=False)
    measured = api.run(tp=2, ep=2, stack=STACK, launch=launch)
    assert measured.run.record.status == "complete"
    for rank, groups in api.communicators(measured).items():
        moe_groups = {name: kinds for name, kinds in groups.items() if name in MOE_GROUPS}
        assert moe_groups, f"rank {rank} recorded no MoE group"
        built = {name: kinds["pynccl"] for name, kinds in moe_groups.items() if kinds["pynccl"] != "skipped: not in stack"}
        assert not built, f"rank {rank}: pynccl asked for on MoE groups: {built}"

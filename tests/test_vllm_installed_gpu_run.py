"""The installed vLLM 0.33.0 ran on an H200 whose NCCL (2.28.9) lacks ``ncclCommSuspend``: vLLM constructed every
group's PyNccl and disabled it itself (results/h200x1-socket-nodes-vllm-installed-20261204/README.md). What an
estimate learns from that run is what vLLM built there, not what a CPU run (where memprobe withholds NCCL) asks for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from memprobe.model.run_files import load_run
from memprobe.engines.vllm.install import asked_kinds, learnt_stack

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "results" / "h200x1-socket-nodes-vllm-installed-20261204"
RUN = FOLDER / "tp4-moe-nodes4-cumemdefault" / "node0" / "runs" / "tp4-moe-nodes4-cumemdefault"


def test_a_pynccl_disabled_by_vllm_on_a_gpu_is_not_built_but_on_cpu_it_was_asked_for():
    decision = {"vllm:pynccl": "constructed (disabled)", "vllm:use_device_communicator": "True"}
    assert asked_kinds(decision, on_gpu=False)["pynccl"]
    assert not asked_kinds(decision, on_gpu=True)["pynccl"]
    assert asked_kinds({"vllm:pynccl": "constructed"}, on_gpu=True)["pynccl"]


def test_the_gpu_run_teaches_no_pynccl_and_its_estimate_is_within_bound():
    stack = learnt_stack(load_run(RUN))
    assert not stack.flags_for("tp")["pynccl"] and not stack.flags_for("ep")["pynccl"]
    checked = subprocess.run([sys.executable, "-m", "memprobe", "estimate", "--check", str(FOLDER)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 checked" in checked.stdout

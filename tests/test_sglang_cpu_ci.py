"""An engine's CPU CI on SGLang's own code: `pip install --no-deps sglang==X` and memprobe, nothing else.

The real-wheel tests need SGLang sites as `.ci/run` installs them (`pip install --no-deps --target SITE sglang==X`):
``MEMPROBE_TEST_SGLANG_SITE`` (0.5.23) and ``MEMPROBE_TEST_SGLANG_SITES`` (``0.5.10.post1=SITE,0.5.11=SITE``), with
memprobe's ``sglang`` extra importable (``MEMPROBE_TEST_SGLANG_EXTRA_PATH`` where it is not in this interpreter).
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from memprobe.engines import standins
from memprobe.engines.sglang import cpu_install

ROOT = Path(__file__).resolve().parent.parent
SITES = dict(item.split("=", 1) for item in os.environ.get("MEMPROBE_TEST_SGLANG_SITES", "").split(",") if "=" in item)
EXTRA_PATH = os.environ.get("MEMPROBE_TEST_SGLANG_EXTRA_PATH", "")
SCENARIOS = ROOT / "configs" / "scenarios" / "sglang-tp4-ep2.toml"
# the custom all-reduce workspaces are tens of MiB, under the default +64 MiB: judged to the MiB here
CUSTOM_ALLREDUCE = "metric=*/custom_allreduce,relative=0%,absolute=1MiB"


def _worker_env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), EXTRA_PATH) if p)}


def test_a_listed_module_is_stood_in_only_where_it_is_not_installed(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for name in ("json", "memprobe_absent_module", "memprobe_unlisted_module"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    finder = standins.install(["json", "memprobe_absent_module"])
    assert importlib.import_module("json").dumps([1]) == "[1]"  # installed: the real one, untouched
    hollow = importlib.import_module("memprobe_absent_module.sub")
    assert getattr(sys.modules["memprobe_absent_module"], standins.STOOD_IN_ATTRIBUTE)
    assert finder.used == ["memprobe_absent_module"]

    class Derived(hollow.Base, frozen=True):  # a module body's uses: base class with keywords, decorator, annotation
        pass

    assert Derived(a=1).a == 1 and hollow.jit(len) is len and (hollow.Type | None) is not None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("memprobe_unlisted_module")  # not on the list: fails as before


def test_the_cpu_requirements_are_named_with_the_pip_line_that_installs_them(tmp_path):
    site = tmp_path / "site"
    for name in cpu_install.REQUIREMENTS:
        (site / name).mkdir(parents=True)
    assert cpu_install.missing_requirements({"PYTHONPATH": str(site)}) == []
    (site / "zmq").rmdir()
    (site / "msgspec").rmdir()
    problem = cpu_install.requirements_problem({"PYTHONPATH": str(site)}, "0.5.23")
    if importlib.util.find_spec("msgspec") or importlib.util.find_spec("zmq"):
        pytest.skip("msgspec or pyzmq is installed in this interpreter")
    assert problem == ("--engine sglang on CPU: SGLang 0.5.23's group code needs msgspec, pyzmq>=25.1.2, not installed "
                       "here; install them: python -m pip install msgspec 'pyzmq>=25.1.2' (or, in memprobe's clone, pip install -e '.[sglang]')")


needs_releases = pytest.mark.skipif(not {"0.5.10.post1", "0.5.11"} <= set(SITES),
                                    reason="set MEMPROBE_TEST_SGLANG_SITES=0.5.10.post1=SITE,0.5.11=SITE (.ci/run installs them)")


@needs_releases
@pytest.mark.e2e
def test_the_gate_on_the_revert_of_pr_22515_fails_naming_every_rank_s_moe_communicators(memprobe, tmp_path):
    """A baseline estimated from SGLang 0.5.11's own code; the gate on 0.5.10.post1 (before PR #22515) exits 1
    naming moe_ep/moe_tp pynccl and custom all-reduce on every rank; its update command, run as printed, passes."""
    env = _worker_env()
    made = memprobe("baseline", "update", "--estimate", "--scenarios", str(SCENARIOS), "--sglang", SITES["0.5.11"],
                    "--out", "b.json", env=env)
    assert made.returncode == 0, made.stderr
    assert "could not import" in made.stderr and "memprobe stood them in" in made.stderr  # said in one line
    gate = memprobe("gate", "--estimate", "--baseline", "b.json", "--sglang", SITES["0.5.10.post1"], "--threshold",
                    CUSTOM_ALLREDUCE, "--json", "gate.json", "--markdown", "gate.md", env=env)
    assert gate.returncode == 1, gate.stderr
    for rank in range(4):
        for metric in ("moe_ep/pynccl", "moe_tp/pynccl", "moe_ep/custom_allreduce", "moe_tp/custom_allreduce"):
            assert f"tp4-ep2.sglang rank {rank} {metric} +" in gate.stdout
    guards = f"this verdict guards the installed SGLang 0.5.10.post1's code at {Path(SITES['0.5.10.post1']).resolve()}"
    assert guards in gate.stdout and guards in (tmp_path / "gate.md").read_text()
    document = json.loads((tmp_path / "gate.json").read_text())
    assert document["guards"].startswith("the installed SGLang 0.5.10.post1's code")
    command = shlex.split(document["update_command"])
    assert command[:3] == ["memprobe", "baseline", "update"] and "--estimate" in command
    assert f"memprobe baseline update" in gate.stdout and document["update_command"] in gate.stdout
    updated = memprobe(*command[1:], env=env)  # as printed
    assert updated.returncode == 0, updated.stderr
    ranks = json.loads((tmp_path / "b.json").read_text())["scenarios"]["tp4-ep2.sglang"]["ranks"]
    assert all(ranks[str(rank)]["moe_ep/pynccl"] > 0 for rank in range(4))  # it recorded what 0.5.10.post1 builds


def test_a_verdict_on_memprobe_s_reproduction_says_the_engine_s_code_is_not_run(memprobe):
    baseline = ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json"
    result = memprobe("gate", "--baseline", str(baseline), "--results",
                      str(ROOT / "results" / "h200x4-20261127" / "compare-tp4-ep2" / "tp4-ep2-lean"), "--json", "g.json")
    assert result.returncode == 0, result.stderr
    assert ("this verdict guards memprobe's reproduction of SGLang 0.5.23 (your engine's code is not run)"
            in result.stdout)


@needs_releases
@pytest.mark.e2e
def test_the_pytest_example_asserts_on_the_engine_s_code_and_fails_on_the_revert():
    import subprocess

    example = ROOT / "examples" / "pytest" / "test_memory_budget.py"
    outcomes = {}
    for release in ("0.5.11", "0.5.10.post1"):
        env = dict(os.environ, MEMPROBE_EXAMPLE_SGLANG=SITES[release], PYTHONPATH=_worker_env()["PYTHONPATH"])
        outcomes[release] = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example),
                                            "-k", "own"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert outcomes["0.5.11"].returncode == 0, outcomes["0.5.11"].stdout
    assert outcomes["0.5.10.post1"].returncode == 1
    assert "the installed SGLang's MoE groups build {'moe_ep/pynccl': 'built'" in outcomes["0.5.10.post1"].stdout


def test_without_a_gpu_the_measuring_commands_name_the_estimate_with_the_same_flags(memprobe):
    from memprobe.launch.no_gpu import estimate_command

    assert estimate_command(["memprobe", "compare", "--tp", "8", "--ep=4", "--device", "cuda", "--jobs", "2", "-q"]) == \
        "memprobe estimate --tp 8 --ep=4"
    assert estimate_command(["memprobe", "run", "--tp", "4", "--stack", "full", "--per-rank", "--run-id", "x"]) == \
        "memprobe estimate --tp 4 --stacks full --per-rank"
    assert estimate_command(["memprobe", "gate", "--baseline", "b.json"]) is None
    result = memprobe("compare", "--tp", "8", "--ep", "4")
    if "no NVIDIA GPU visible" not in result.stderr:
        pytest.skip("a GPU is visible here")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "`memprobe estimate --tp 8 --ep 4` answers without one (estimated GPU bytes)" in result.stderr
    assert "--device cpu runs the pipeline measuring host memory, not GPU bytes" in result.stderr
    estimated = memprobe("estimate", "--tp", "8", "--ep", "4")  # the command named, as named
    assert estimated.returncode == 0 and "ESTIMATED" in estimated.stdout
    gate = memprobe("gate", "--baseline", str(ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json"))
    assert gate.returncode == 2 and "`memprobe gate --estimate` judges an estimated baseline" in gate.stderr


def test_the_estimate_hint_keeps_every_engine_s_layout_flags_and_site():
    """vLLM's flags reach the hint (a hint without --moe would estimate a dense model); a switch takes no value; run's
    --vllm SITE is estimate's, compare's --vllm LABEL=SITE is not."""
    from memprobe.launch.no_gpu import estimate_command

    assert estimate_command(["memprobe", "run", "--engine", "vllm", "--vllm", "site", "--tp", "4", "--moe",
                             "--enable-eplb", "--enable-expert-parallel", "--dp", "2", "--stack", "installed"]) == \
        "memprobe estimate --engine vllm --vllm site --tp 4 --moe --enable-eplb --enable-expert-parallel --dp 2 " \
        "--stacks installed"
    assert estimate_command(["memprobe", "compare", "--engine", "vllm-ref", "--vllm", "a=b", "--dense", "--tp", "2"]) \
        == "memprobe estimate --engine vllm-ref --dense --tp 2"

"""An engine's CPU CI on vLLM's own code: `pip install --no-deps vllm==0.33.0` and memprobe's vllm extra, nothing else.

The demonstration README "In CI" gives: a baseline estimated from vLLM 0.33.0 with
``examples/vllm/shared-ep-0.33.0.patch`` applied to its ``parallel_state.py`` (EP reuses TP's device communicator when
its rank lists are TP's), then the gate on stock 0.33.0 fails naming the EP group's PyNccl communicator on every rank. It needs vLLM 0.33.0's site as
``.ci/run`` installs it (``pip install --no-deps --target SITE vllm==0.33.0``): ``MEMPROBE_TEST_VLLM_SITE``, with
memprobe's ``vllm`` extra importable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the site, then (optional, os.pathsep-separated) where memprobe's vllm extra is when not in this interpreter
SITE, *EXTRA_PATH = os.environ.get("MEMPROBE_TEST_VLLM_SITE", "").split(os.pathsep)
PATCH = ROOT / "examples" / "vllm" / "shared-ep-0.33.0.patch"
SCENARIOS = ROOT / "configs" / "scenarios" / "vllm-tp2-moe.toml"
SCENARIO = "tp2-moe.vllm"
PARALLEL_STATE = Path("vllm") / "distributed" / "parallel_state.py"

needs_vllm = pytest.mark.skipif(not SITE, reason="set MEMPROBE_TEST_VLLM_SITE: vLLM 0.33.0's site as .ci/run installs "
                                                 "it (pip install --no-deps --target SITE vllm==0.33.0)")


def shared_ep_site(stock: Path, folder: Path) -> Path:
    """README's three lines: a copy of the site made of links, its parallel_state.py a real copy, the patch applied."""
    patched = folder / "vllm-shared-ep"
    for line in (f'cp -rs "{stock.resolve()}" "{patched}"',
                 f'cp --remove-destination "{stock / PARALLEL_STATE}" "{patched / PARALLEL_STATE.parent}/"',
                 f'patch -p1 -s -d "{patched}" < "{PATCH}"'):
        done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
    return patched


@needs_vllm
def test_the_patch_is_against_the_released_parallel_state_and_leaves_the_stock_site_as_it_was(tmp_path):
    stock = Path(SITE) / PARALLEL_STATE
    recorded = re.search(r"sha256 ([0-9a-f]{64})", PATCH.read_text()).group(1)
    before = hashlib.sha256(stock.read_bytes()).hexdigest()
    assert before == recorded  # the file the patch's header names: vLLM 0.33.0's wheel
    patched = shared_ep_site(Path(SITE), tmp_path)
    assert hashlib.sha256(stock.read_bytes()).hexdigest() == before
    text = (patched / PARALLEL_STATE).read_text()
    assert "_EP.share_device_communicator(_TP)" in text and not (patched / PARALLEL_STATE).is_symlink()
    assert (patched / "vllm" / "__init__.py").is_symlink()  # everything else is the stock site's


def _worker_env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), *EXTRA_PATH])}


@needs_vllm
@pytest.mark.e2e
def test_the_gate_on_stock_vllm_fails_naming_every_rank_s_ep_pynccl(memprobe, tmp_path):
    """A baseline estimated from vLLM 0.33.0's own code with shared-ep applied; the gate on stock 0.33.0 exits 1
    naming the EP group's PyNccl communicator on every rank, and nothing of any other group; its update command,
    run as printed, records stock 0.33.0."""
    env = _worker_env()
    patched = shared_ep_site(Path(SITE), tmp_path)
    made = memprobe("baseline", "update", "--estimate", "--scenarios", str(SCENARIOS), "--vllm", str(patched),
                    "--out", "b.json", env=env)
    assert made.returncode == 0, made.stderr
    assert "memprobe stood them in (memprobe/engines/vllm/standins.py)" in made.stderr  # said in one line
    ranks = json.loads((tmp_path / "b.json").read_text())["scenarios"][SCENARIO]["ranks"]
    assert all(ranks[str(rank)]["ep/pynccl"] == 0 < ranks[str(rank)]["tp/pynccl"] for rank in range(2))
    gate = memprobe("gate", "--estimate", "--baseline", "b.json", "--vllm", SITE, "--json", "gate.json",
                    "--markdown", "gate.md", env=env)
    assert gate.returncode == 1, gate.stdout + gate.stderr
    regressions = re.findall(rf"^{re.escape(SCENARIO)} rank (\d) (\S+) \+(\d+) MiB over baseline", gate.stdout, re.MULTILINE)
    by_rank = {rank: {metric for r, metric, _ in regressions if r == rank} for rank in ("0", "1")}
    assert by_rank == {rank: {"ep/pynccl", "ep/init", "total_after_init", "total_after_first_use"} for rank in by_rank}
    assert all(int(mib) > 64 for _, metric, mib in regressions if metric == "ep/pynccl")  # a communicator's buffers
    guards = f"this verdict guards the installed vLLM 0.33.0's code at {Path(SITE).resolve()}"
    assert guards in gate.stdout and guards in (tmp_path / "gate.md").read_text()
    document = json.loads((tmp_path / "gate.json").read_text())
    assert document["guards"].startswith("the installed vLLM 0.33.0's code")
    command = shlex.split(document["update_command"])
    assert command[:3] == ["memprobe", "baseline", "update"] and "--estimate" in command
    assert command[command.index("--vllm") + 1] == str(Path(SITE).resolve()) and document["update_command"] in gate.stdout
    updated = memprobe(*command[1:], env=env)  # as printed
    assert updated.returncode == 0, updated.stderr
    ranks = json.loads((tmp_path / "b.json").read_text())["scenarios"][SCENARIO]["ranks"]
    assert all(ranks[str(rank)]["ep/pynccl"] > 0 for rank in range(2))  # it recorded what stock 0.33.0 builds


@needs_vllm
@pytest.mark.e2e
def test_the_pytest_example_asserts_on_vllm_s_own_code_and_fails_on_stock(tmp_path):
    import sys

    example = ROOT / "examples" / "pytest" / "test_memory_budget.py"
    outcomes = {}
    for name, site in (("shared-ep", shared_ep_site(Path(SITE), tmp_path)), ("stock", Path(SITE))):
        env = dict(os.environ, MEMPROBE_EXAMPLE_VLLM=str(site), PYTHONPATH=_worker_env()["PYTHONPATH"])
        outcomes[name] = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example),
                                         "-k", "ep_group"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert outcomes["shared-ep"].returncode == 0, outcomes["shared-ep"].stdout
    assert outcomes["stock"].returncode == 1, outcomes["stock"].stdout
    assert "rank 0: the installed vLLM's EP group builds its own PyNccl (built vLLM 0.33.0)" in outcomes["stock"].stdout

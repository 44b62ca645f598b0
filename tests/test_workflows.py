"""Each example workflow's steps, run as written (examples/github-actions/*.yml, parsed with PyYAML).

What is substituted, and only this, to stay within CI's time:

* GitHub's own actions (``actions/checkout``, ``actions/setup-python``, ``actions/upload-artifact``) are not run;
  the working folder stands for the checkout (SGLang's checkout: ``python/`` is an SGLang site ``.ci/run``
  installs with ``pip install --no-deps --target``, which holds the same ``sglang`` package; vLLM's checkout:
  ``vllm/`` is the ``vllm`` package of the 0.33.0 site ``.ci/run`` installs the same way);
* a ``run:`` step that is ``pip install`` of a package this interpreter already has (torch) is checked, not run;
* ``python`` is this interpreter (the suite's venv, not a fresh one), also for the GPU workflow's ``/opt/venv/bin/python``;
* the memprobe action's ``install`` input is checked to be importable here (memprobe and its ``sglang`` and ``vllm``
  extras are installed by ``.ci/run``) and then given as ``none``.

Every other step runs: the baseline command each workflow's header says to run once, then the action's own ``run:``
line from action.yml with the ``with:`` inputs as its ``INPUT_*`` variables.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, _memprobe_env
from test_ci_action import parse_outputs

yaml = pytest.importorskip("yaml")
WORKFLOWS = ROOT / "examples" / "github-actions"
SGLANG_SITE = os.environ.get("MEMPROBE_TEST_SGLANG_SITE", "")
EXTRA_PATH = os.environ.get("MEMPROBE_TEST_SGLANG_EXTRA_PATH", "")
GITHUB_ACTIONS = ("actions/checkout@", "actions/setup-python@", "actions/upload-artifact@")


def _environment(folder: Path) -> dict[str, str]:
    bin_dir = folder / ".bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        # `python` in a step is this interpreter (a script, not a link: a venv's python finds its venv by its own path)
        for name, command in (("python", f'"{sys.executable}"'), ("memprobe", f'"{sys.executable}" -m memprobe')):
            (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
            (bin_dir / name).chmod(0o755)
    env = _memprobe_env({"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), EXTRA_PATH, os.environ.get("PYTHONPATH", "")) if p)
    return env


def _header_commands(text: str) -> list[str]:
    """The ``memprobe ...`` commands the workflow's header comment says to run once (with ``\\`` continuations)."""
    lines = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    commands, current = [], ""
    for line in lines:
        if current or line.startswith("memprobe baseline update"):
            current += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(current.strip())
                current = ""
    return commands


def _already_installed(command: str) -> bool:
    words = shlex.split(command)
    if words[:4] != ["python", "-m", "pip", "install"]:
        return False
    packages = [w for w in words[4:] if not w.startswith("-") and not w.startswith("http")]
    return all(importlib.util.find_spec(p) is not None for p in packages)


def _action(step: dict, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    definition = yaml.safe_load((ROOT / "action.yml").read_text())
    inputs = {name: str(spec.get("default", "")) for name, spec in definition["inputs"].items()}
    inputs.update({name: str(value) for name, value in (step.get("with") or {}).items()})
    install = inputs["install"]
    for extra in re.findall(r"^action\[(\w+)\]$", install) or []:  # what the action would install is here already
        wanted = {"sglang": ("msgspec", "zmq", "pydantic", "PIL", "packaging"),
                  "vllm": ("msgspec", "zmq", "pydantic", "PIL", "packaging", "setuptools")}[extra]
        missing = [m for m in wanted if importlib.util.find_spec(m) is None and not any(
            (Path(p) / m).exists() for p in env["PYTHONPATH"].split(os.pathsep))]
        assert not missing, f"the {extra} extra is not installed here: {missing}"
    assert install.startswith("action"), install
    inputs["install"] = "none"
    inputs["python"] = "python"
    action_step = definition["runs"]["steps"][0]
    variables = {key: re.sub(r"\$\{\{ inputs\.([\w-]+) \}\}", lambda m: inputs[m.group(1)], value)
                 for key, value in action_step["env"].items()}
    env = dict(env, **variables, GITHUB_ACTION_PATH=str(ROOT), GITHUB_OUTPUT=str(folder / "github-output"),
               GITHUB_STEP_SUMMARY=str(folder / "step-summary"))
    return subprocess.run(["bash", "-c", action_step["run"]], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=400)


def _run_workflow(name: str, folder: Path) -> list[subprocess.CompletedProcess]:
    """Every step of the workflow's one job; the memprobe action's result last."""
    text = (WORKFLOWS / name).read_text()
    workflow = yaml.safe_load(text)
    (job,) = workflow["jobs"].values()
    env = _environment(folder)
    for command in _header_commands(text):
        done = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    results = []
    for step in job["steps"]:
        uses = step.get("uses", "")
        if uses.startswith(GITHUB_ACTIONS):
            continue
        if "run" in step:
            if _already_installed(step["run"]):
                continue
            done = subprocess.run(["bash", "-c", step["run"]], cwd=folder, env=env, capture_output=True, text=True, timeout=400)
            assert done.returncode == 0, f"{step['run']}: {done.stderr}"
        elif uses.startswith("OWNER/memprobe@"):
            results.append(_action(step, folder, env))
        else:
            pytest.fail(f"{name}: a step this test does not know how to run: {step}")
    return results


# SGLang's checkout: python/sglang, any release (0.5.11's import chain is the quicker one to run on CPU)
CHECKOUT_SITE = dict(item.split("=", 1) for item in os.environ.get("MEMPROBE_TEST_SGLANG_SITES", "").split(",")
                     if "=" in item).get("0.5.11") or SGLANG_SITE


@pytest.mark.skipif(not CHECKOUT_SITE, reason="set MEMPROBE_TEST_SGLANG_SITE(S): SGLang sites as .ci/run installs them")
@pytest.mark.e2e
def test_the_cpu_workflow_gates_sglang_s_own_code_as_written(tmp_path):
    from memprobe.engines.sglang.install import read_version

    (tmp_path / "python").symlink_to(Path(CHECKOUT_SITE).resolve())
    (tmp_path / "sglang-tp4-ep2.toml").write_text((ROOT / "configs" / "scenarios" / "sglang-tp4-ep2.toml").read_text())
    (tmp_path / ".github" / "memprobe").mkdir(parents=True)
    (action,) = _run_workflow("cpu-estimate-gate.yml", tmp_path)
    assert action.returncode == 0, action.stdout + action.stderr
    outputs = parse_outputs(tmp_path / "github-output")
    assert outputs["verdict"] == "pass"
    summary = (tmp_path / "step-summary").read_text()
    assert f"the installed SGLang {read_version(Path(CHECKOUT_SITE) / 'sglang')}'s code" in summary
    assert (tmp_path / "memprobe-ci" / "gate.xml").is_file()


# vLLM's checkout: vllm/, the package of vLLM 0.33.0's site (the first entry of MEMPROBE_TEST_VLLM_SITE)
VLLM_SITE = os.environ.get("MEMPROBE_TEST_VLLM_SITE", "").split(os.pathsep)[0]


@pytest.mark.skipif(not VLLM_SITE, reason="set MEMPROBE_TEST_VLLM_SITE: vLLM 0.33.0's site as .ci/run installs it")
@pytest.mark.e2e
def test_the_cpu_workflow_gates_vllm_s_own_code_as_written(tmp_path):
    from memprobe.engines.vllm.install import read_version

    (tmp_path / "vllm").symlink_to((Path(VLLM_SITE) / "vllm").resolve())  # vLLM's checkout holds vllm/ at its root
    (tmp_path / "vllm-tp2-moe.toml").write_text((ROOT / "configs" / "scenarios" / "vllm-tp2-moe.toml").read_text())
    (tmp_path / ".github" / "memprobe").mkdir(parents=True)
    (action,) = _run_workflow("cpu-vllm-gate.yml", tmp_path)
    assert action.returncode == 0, action.stdout + action.stderr
    assert parse_outputs(tmp_path / "github-output")["verdict"] == "pass"
    summary = (tmp_path / "step-summary").read_text()
    assert f"the installed vLLM {read_version(Path(VLLM_SITE) / 'vllm')}'s code" in summary
    assert (tmp_path / "memprobe-ci" / "gate.xml").is_file()


def test_the_gpu_workflow_runs_as_written_up_to_the_gpu_it_needs(tmp_path):
    (tmp_path / ".github" / "memprobe").mkdir(parents=True)
    (tmp_path / ".github" / "memprobe" / "h200x4-tp4-ep2-lean.json").write_text(
        (ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json").read_text())
    text = (WORKFLOWS / "gpu-measured-gate.yml").read_text()
    assert _header_commands(text)[0].startswith("memprobe baseline update --scenarios configs/scenarios/moe-stacks.toml")
    (action,) = _run_workflow_without_header(text, tmp_path)
    if "no NVIDIA GPU visible" not in action.stderr:
        pytest.skip("a GPU is visible here: the measured gate is the GPU machines' job")
    assert action.returncode == 2  # the step fails with memprobe's exit code: bad input, before anything ran
    outputs = parse_outputs(tmp_path / "github-output")
    assert (outputs["verdict"], outputs["exit-code"]) == ("usage-error", "2")
    assert "`memprobe gate --estimate` judges an estimated baseline" in action.stderr


def _run_workflow_without_header(text: str, folder: Path) -> list[subprocess.CompletedProcess]:
    """The GPU workflow's header makes its baseline on GPUs: the committed one stands for it."""
    workflow = yaml.safe_load(text)
    (job,) = workflow["jobs"].values()
    env = _environment(folder)
    return [_action(step, folder, env) for step in job["steps"] if step.get("uses", "").startswith("OWNER/memprobe@")]

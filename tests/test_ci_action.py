"""The GitHub Action's script (ci/action.py), run as action.yml runs it: the inputs as INPUT_* variables,
real memprobe on CPU, GitHub's output and step-summary files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conftest import ROOT, _memprobe_env

SCRIPT = ROOT / "ci" / "action.py"


def run_action(folder: Path, **inputs: str) -> tuple[subprocess.CompletedProcess, dict[str, str], str]:
    """The script with ``inputs`` (out_dir -> INPUT_OUT_DIR); returns the process, its outputs and the step summary."""
    outputs, summary = folder / "github-output", folder / "step-summary"
    env = {f"INPUT_{name.upper()}": value for name, value in {"install": "none", **inputs}.items()}
    env.update(GITHUB_OUTPUT=str(outputs), GITHUB_STEP_SUMMARY=str(summary))
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=folder, env=_memprobe_env(env), capture_output=True,
                          text=True, timeout=240)
    return done, parse_outputs(outputs), summary.read_text() if summary.exists() else ""


def parse_outputs(path: Path) -> dict[str, str]:
    """GitHub's ``name<<DELIMITER`` blocks."""
    if not path.exists():
        return {}
    found = re.findall(r"^([\w-]+)<<(\S+)\n(.*?)\n?\2$", path.read_text(), flags=re.M | re.S)
    return {name: value for name, _delimiter, value in found}


def test_the_measured_cpu_gate_passes_with_every_output(cpu_run, tmp_path):
    done, outputs, summary = run_action(tmp_path, command="gate", baseline=str(cpu_run["baseline"]), device="cpu")
    assert done.returncode == 0, done.stderr
    assert outputs["verdict"] == "pass" and outputs["exit-code"] == "0"
    out_dir = tmp_path / "memprobe-ci"
    assert outputs["junit-xml"] == "memprobe-ci/gate.xml" and outputs["json"] == "memprobe-ci/gate.json"
    cases = ElementTree.parse(out_dir / "gate.xml").getroot().findall(".//testcase")
    assert [case.get("name") for case in cases] == ["rank 0"] and not cases[0].findall("failure")
    # the gate measured: its run folder is new, under out-dir, with readings, and listed for upload
    (run_dir,) = [tmp_path / line for line in outputs["run-dirs"].splitlines()]
    assert run_dir.parent == out_dir / "runs" and list(run_dir.rglob("readings.csv"))
    assert set(outputs["files"].splitlines()) == {"memprobe-ci/gate.xml", "memprobe-ci/gate.md", "memprobe-ci/gate.json",
                                                  outputs["run-dirs"]}
    assert "memprobe gate: PASS" in summary  # memprobe's own Markdown verdict, once
    assert summary.count("### ") == 1
    assert "memprobe gate: PASS" in done.stdout
    assert "steps (" in done.stderr and "steps (" not in done.stdout  # progress on stderr, results on stdout


def test_a_regression_fails_the_step_with_exit_1_and_a_junit_failure(cpu_run, tmp_path):
    done, outputs, summary = run_action(tmp_path, command="gate", baseline=str(cpu_run["baseline"]),
                                        results=str(cpu_run["run_dir"]),
                                        thresholds="metric=total_after_first_use,max=1MiB\n")
    assert done.returncode == 1, done.stderr
    assert outputs["verdict"] == "regression" and outputs["exit-code"] == "1"
    assert outputs["run-dirs"] == ""  # judged saved results: nothing measured
    failures = ElementTree.parse(tmp_path / outputs["junit-xml"]).getroot().findall(".//testcase/failure")
    assert len(failures) == 1 and "total_after_first_use" in failures[0].get("message", "") + (failures[0].text or "")
    assert "memprobe gate: FAIL" in summary


def test_memprobe_refusing_an_input_is_a_usage_error_named_in_the_summary(tmp_path):
    stale = tmp_path / "memprobe-ci" / "gate.xml"  # an earlier job's, in a workspace the runner kept
    stale.parent.mkdir()
    stale.write_text("<testsuites/>")
    done, outputs, summary = run_action(tmp_path, command="gate", baseline="missing.json", device="cpu")
    assert done.returncode == 2
    assert outputs["verdict"] == "usage-error" and outputs["junit-xml"] == "" and not stale.exists()
    assert "missing.json" in summary and "usage-error (exit 2)" in summary
    assert not (tmp_path / "memprobe-ci" / "runs").exists()


@pytest.mark.parametrize("inputs, message", [
    ({"command": "plan --tp 2"}, "command 'plan --tp 2': start it with one of gate, baseline update"),
    ({"command": ""}, "the command input is empty"),
    ({"command": "run --tp 1", "exports": "junit-xml"}, "memprobe run does not write junit-xml (it writes: json)"),
    ({"command": "gate", "exports": "html"}, "unknown export 'html'"),
    ({"command": "report x", "device": "cpu"}, "memprobe report takes no device input"),
    ({"command": "compare", "thresholds": "max=1GiB"}, "memprobe compare takes no thresholds input"),
    ({"command": "gate --estimate", "device": "cpu"}, "memprobe gate --estimate takes no device input"),
    ({"command": "gate --scenario 'unclosed"}, "No closing quotation"),
    ({"command": "gate --out-dir elsewhere --json=x.json"}, "command: --json, --out-dir are set by the action"),
    ({"command": "gate --estimate -b B.json", "baseline": "A.json"}, "command: --baseline is set by the action"),
    ({"command": "gate --estimate -bB.json", "baseline": "A.json"}, "command: --baseline is set by the action"),
])
def test_an_input_the_action_cannot_use_exits_2_before_anything_runs(tmp_path, inputs, message):
    done, outputs, _summary = run_action(tmp_path, install="pip-must-not-run", **inputs)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 3  # the error, then the two outputs
    assert outputs == {"verdict": "usage-error", "exit-code": "2"}
    assert not (tmp_path / "memprobe-ci").exists()


def test_action_yml_hands_every_input_to_the_script_and_every_output_back():
    text = (ROOT / "action.yml").read_text()
    inputs_block = text.split("\ninputs:\n", 1)[1].split("\noutputs:\n", 1)[0]
    inputs = re.findall(r"^  ([\w-]+):$", inputs_block, flags=re.M)
    passed = dict(re.findall(r"^\s+(INPUT_\w+): \$\{\{ inputs\.([\w-]+) \}\}$", text, flags=re.M))
    assert sorted(passed.values()) == sorted(inputs)
    assert all(name == "INPUT_" + value.upper().replace("-", "_") for name, value in passed.items())
    script = SCRIPT.read_text()
    for name in set(inputs) - {"python"}:  # python: the interpreter action.yml starts the script with
        assert f'"{name}"' in script, name  # read with read_input("name")
    outputs_block = text.split("\noutputs:\n", 1)[1].split("\nruns:\n", 1)[0]
    for name in re.findall(r"^  ([\w-]+):$", outputs_block, flags=re.M):
        assert f"value: ${{{{ steps.memprobe.outputs.{name} }}}}" in outputs_block
        assert f'"{name}"' in script, name


@pytest.mark.parametrize("example", sorted((ROOT / "examples" / "github-actions").glob("*.yml")), ids=lambda p: p.name)
def test_each_example_workflow_gives_the_action_only_inputs_it_has(example):
    import importlib.util

    inputs_block = (ROOT / "action.yml").read_text().split("\ninputs:\n", 1)[1].split("\noutputs:\n", 1)[0]
    inputs = set(re.findall(r"^  ([\w-]+):$", inputs_block, flags=re.M))
    step = example.read_text().split("uses: OWNER/memprobe@", 1)[1].split("\n      - ", 1)[0]
    given = dict(re.findall(r"^          ([\w-]+): (.*)$", step, flags=re.M))
    assert given and set(given) <= inputs
    spec = importlib.util.spec_from_file_location("memprobe_action", SCRIPT)
    action = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = action  # dataclasses look their module up there
    spec.loader.exec_module(action)
    assert action.split_command(given["command"])[0] == "gate"
    assert "upload-artifact" in example.read_text() and "if: always()" in example.read_text()


def test_an_estimate_gets_no_run_folder_and_no_device(tmp_path):
    """An estimate measures nothing; whether this memprobe has --estimate or not, the action's command line is the same."""
    done, _outputs, _summary = run_action(tmp_path, command="gate --estimate --sglang python", baseline="b.json")
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("memprobe-action: memprobe ")]
    assert line == ("memprobe-action: memprobe gate --estimate --sglang python --baseline b.json --junit-xml memprobe-ci/gate.xml "
                    "--markdown memprobe-ci/gate.md --json memprobe-ci/gate.json")

"""The command line with more than one engine: a stack given for an engine that lacks it is refused, an omitted one is
the engine's own; every help names every engine and its stacks, and its plan/estimate examples run as written; the
layout options are declared once, from the engines' layouts; one error style in every command. In-process (CliRunner),
nothing launched."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from conftest import ROOT
from memprobe import engines
from memprobe.cli import app
from memprobe.engines.api import LayoutBase, flag_field

LAYOUT_COMMANDS = ("plan", "run", "compare", "estimate")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def help_words(*command: str) -> str:
    """A command's help as one line (click wraps at 80 columns, also after a hyphen inside a word)."""
    return " ".join(re.sub(r"(?<=\w-)\n\s*", "", invoke(*command, "--help").output).split())


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ --stack / --stacks


@pytest.mark.parametrize("args", [
    ("plan", "--engine", "vllm-ref", "--tp", "2", "--stack", "lean"),
    ("run", "--engine", "vllm-ref", "--device", "cpu", "--tp", "2", "--stack", "lean"),
    ("compare", "--engine", "vllm-ref", "--device", "cpu", "--tp", "2", "--stacks", "full,lean"),
    ("estimate", "--engine", "vllm-ref", "--tp", "2", "--stacks", "full,lean"),
    ("plan", "--tp", "2", "--stack", "vllm"),
    ("estimate", "--tp", "2", "--stacks", "vllm,shared-ep"),
], ids=lambda args: " ".join(args[:3]))
def test_a_stack_the_engine_lacks_is_one_line_naming_that_engine_s_stacks(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(invoke(*args))
    engine = engines.get(args[args.index("--engine") + 1] if "--engine" in args else "sglang-ref").engine
    assert line.startswith("memprobe: error: --stack") and f"of {engine.label} ({engine.builtin_stacks_text})" in line
    assert list(tmp_path.iterdir()) == []  # nothing launched or created


@pytest.mark.parametrize("args", [
    ("estimate", "--tp", "4", "--dp", "2"),
    ("compare", "--device", "cpu", "--tp", "4", "--moe"),
    ("estimate", "--engine", "vllm-ref", "--tp", "4", "--moe-dp", "2"),
], ids=lambda args: " ".join(args))
def test_a_width_the_engine_has_not_is_refused_not_dropped(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flag = next(arg for arg in args[1:] if arg.startswith("--") and arg not in ("--tp", "--device", "--engine"))
    assert one_error_line(invoke(*args)).startswith(f"memprobe: error: {flag} is not a flag of engine ")
    assert list(tmp_path.iterdir()) == []


def test_an_omitted_stack_is_the_engine_s_default_and_a_given_one_is_kept():
    from memprobe import api
    from memprobe.api.measuring import _run_scenario

    assert invoke("plan", "--engine", "vllm-ref", "--tp", "2").stdout.splitlines()[0].endswith("stack: vllm")
    assert invoke("plan", "--tp", "2").stdout.splitlines()[0].endswith("stack: lean")
    assert invoke("plan", "--tp", "2", "--stack", "full").stdout.splitlines()[0].endswith("stack: full")
    assert _run_scenario(api.RunOptions(tp=2, engine="vllm-ref")).stack == "vllm"
    assert _run_scenario(api.RunOptions(tp=2, engine="vllm-ref", stack="shared-ep")).stack == "shared-ep"
    assert _run_scenario(api.RunOptions(tp=2, ep=2)).stack == "lean"
    assert api.estimate(tp=2, moe=True, engine="vllm-ref").names() == ["tp2-moe-vllm", "tp2-moe-shared-ep"]
    assert api.estimate(tp=4, ep=2).names() == ["tp4", "tp4-ep2-full", "tp4-ep2-lean"]


def test_baseline_and_gate_take_their_stacks_from_scenario_files_by_the_same_rule(tmp_path, monkeypatch):
    """baseline update and gate have no --stack: a scenario file's stack is kept or refused as --stack is."""
    monkeypatch.chdir(tmp_path)
    scenario = '[[scenario]]\nname = "a"\ntp = 2\nmoe = true\nengine = "vllm-ref"\n'
    Path("lean.toml").write_text(scenario + 'stack = "lean"\n')
    line = one_error_line(invoke("baseline", "update", "--estimate", "--scenarios", "lean.toml", "--out", "b.json"))
    assert line.startswith("memprobe: error: scenario a: stack 'lean' is neither a built-in stack of vLLM (vllm,")
    Path("omitted.toml").write_text(scenario)
    done = invoke("baseline", "update", "--estimate", "--scenarios", "omitted.toml", "--out", "b.json")
    assert done.exit_code == 0, done.output
    assert json.loads(Path("b.json").read_text())["scenarios"]["a"]["definition"]["stack"]["name"] == "vllm"
    judged = invoke("gate", "--estimate", "--baseline", "b.json")
    assert judged.exit_code == 0, judged.output


def test_an_omitted_env_preset_is_the_engine_s_and_a_given_one_is_kept(tmp_path):
    from memprobe import api
    from memprobe.model.scenario import load_scenario_file

    def presets(**given):
        return {item.scenario.env_preset for item in api.estimate(tp=2, **given).runs}

    assert presets(engine="vllm-ref") == {"vllm"} and presets(engine="vllm-ref", env_preset="sglang") == {"sglang"}
    assert presets(engine="sglang-ref") == {"sglang"} and presets(engine="sglang-ref", env_preset="none") == {"none"}
    path = tmp_path / "s.toml"
    path.write_text('baseline = "a"\n[[scenario]]\nname = "a"\ntp = 2\nmoe = true\nengine = "vllm-ref"\n')
    assert [s.env_preset for s in load_scenario_file(path).scenarios] == ["vllm"]  # not SGLang's NCCL settings


# ------------------------------------------------------------------------------------------------------ help


@pytest.mark.parametrize("command", LAYOUT_COMMANDS)
def test_help_names_every_engine_and_each_engine_s_stacks(command):
    text = help_words(command)
    for engine in engines.builtin_engines():
        for name in (*engine.names, *engine.aliases):
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (command, name)
        pair = ",".join(engine.stack_pair or (engine.default_stack,))
        default = pair if command in ("compare", "estimate") else f"(default {engine.default_stack})"
        assert default in text, (command, default)  # what a left-out --stack / --stacks means for this engine
    plan = help_words("plan")
    for engine in engines.builtin_engines():
        assert engine.builtin_stacks_text in plan


def _examples(help_text: str, command: str) -> list[list[str]]:
    lines = [line.split("#")[0].strip() for line in help_text.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith(f"memprobe {command} ")]


@pytest.mark.parametrize("command", ["plan", "estimate"])
def test_the_plan_and_estimate_examples_in_help_run_as_written(command, monkeypatch):
    monkeypatch.chdir(ROOT)
    examples = _examples(invoke(command, "--help").output, command) + _examples(invoke("--help").output, command)
    assert any("vllm-ref" in example for example in examples)  # the vLLM example is there
    placeholders = {"mine.json"}  # a file of the reader's own
    for example in examples:
        if placeholders & set(example):
            continue
        result = invoke(*example)
        assert result.exit_code == 0, (example, result.output)


# ------------------------------------------------------------------------------------------- layout options


def _options(command: str) -> dict[str, tuple]:
    click_command = typer.main.get_command(app).commands[command]
    return {param.name: (tuple(param.opts), tuple(param.secondary_opts), param.default, param.help, param.envvar)
            for param in click_command.params}


def test_the_layout_options_are_declared_once_from_the_engines_layouts():
    from memprobe.api import Widths
    from memprobe.commands.options import LAYOUT_OPTIONS

    declared = {name: _options("plan")[name] for name in LAYOUT_OPTIONS}
    for command in LAYOUT_COMMANDS:
        assert {name: _options(command)[name] for name in LAYOUT_OPTIONS} == declared, command
    assert list(LAYOUT_OPTIONS) == [name for name in Widths.__dataclass_fields__]
    vllm = engines.engine("vllm").layout_type
    for name in ("dp", "dcp", "pcp", "enable_expert_parallel", "enable_eplb", "moe", "disable_custom_all_reduce",
                 "all2all_backend"):
        opts, secondary, default, help_, envvar = declared[name]
        assert opts + secondary == vllm.spellings(name)  # --moe and its off form --dense, as the layout declares
        assert help_ == vllm.help_of(name) and default == getattr(Widths(), name)
        assert envvar == f"MEMPROBE_{name.upper()}"
    assert "vLLM" in declared["pp"][3] and "SGLang" in declared["pp"][3]  # a width both engines have: both helps


def test_every_layout_option_reaches_the_engine(tmp_path):
    """Each of vLLM's options, given on the command line, is in the layout planned (nothing dropped on the way)."""
    line = invoke("plan", "--engine", "vllm-ref", "--tp", "2", "--dp", "2", "--pcp", "2", "--dcp", "2", "--moe",
                  "--enable-expert-parallel", "--enable-eplb", "--disable-custom-all-reduce", "--all2all-backend",
                  "naive").stdout.splitlines()[0]
    assert line.startswith("memprobe plan: --tp 2 --dp 2 --dcp 2 --pcp 2 --enable-expert-parallel --enable-eplb --moe "
                           "--disable-custom-all-reduce --all2all-backend naive"), line
    assert "dense" in invoke("plan", "--engine", "vllm-ref", "--tp", "2", "--moe", "--dense").stdout.splitlines()[0]


# ------------------------------------------------------------------------------------------ no-GPU hint


@dataclass(frozen=True)
class _PairedLayout(LayoutBase):
    tp: int = flag_field(flag="--tp", help="Ranks.")
    paired: bool = flag_field(False, flag="--paired", off_flag="--unpaired", help="A switch with an off form.")

    @property
    def world_size(self) -> int:
        return self.tp


def test_the_no_gpu_hint_takes_each_engine_s_flags_from_its_layout_declaration(monkeypatch):
    from memprobe.launch.no_gpu import estimate_command

    plugin = SimpleNamespace(layout_type=_PairedLayout)
    monkeypatch.setattr(engines, "all_engines", lambda: (*engines.builtin_engines(), plugin))
    assert estimate_command(["memprobe", "run", "--tp", "2", "--unpaired", "--stack", "x"]) == \
        "memprobe estimate --tp 2 --unpaired --stacks x"
    assert estimate_command(["memprobe", "compare", "--engine", "vllm-ref", "--dense", "--tp", "2"]) == \
        "memprobe estimate --engine vllm-ref --dense --tp 2"


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args", [
    ("gate", "--baseline", "missing.json", "--results", "."),
    ("baseline", "update", "--out", "b.json", "--from", "missing"),
    ("plan", "--tp", "0"),
], ids=lambda args: args[0])
def test_every_command_s_error_is_one_line_in_one_style(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert one_error_line(invoke(*args)).startswith("memprobe: error: ")


# ----------------------------------------------------------------------------------------------- install lines


def test_install_lines_install_memprobe_from_its_clone_not_from_pypi():
    """memprobe-llm is not on PyPI: a line that installs it by name alone (``pip install 'memprobe-llm[vllm]'``)
    fails for every reader; the docs install the clone (``pip install -e '.[vllm]'``), as README's first command."""
    from memprobe.engines.sglang import cpu_install
    from memprobe.engines.vllm import install

    by_name = re.compile(r"pip install (-\S+ )*['\"]?memprobe-llm(\[[\w,]+\])?['\"]?(?=[\s`]|$)(?!\s*@)")
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = [f"{path.name}: {match.group(0)}" for path in documents for match in by_name.finditer(path.read_text())]
    assert found == []
    for module in (cpu_install, install):
        assert not by_name.search(f"pip install '{module.EXTRA}'")

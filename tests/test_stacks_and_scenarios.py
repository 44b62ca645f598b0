"""Stack files, scenario files and the worker environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from memprobe.launch.options import LaunchOptions, recorded_environment, worker_environment
from memprobe.errors import UsageError
from memprobe.engines.sglang.layout import SGLangLayout as Layout
from memprobe.model.scenario import Scenario, load_scenario_file
from memprobe.engines.sglang.stacks import FULL, LEAN
from memprobe.engines.stacks import load_stack_file
from memprobe.engines.sglang import ENGINE

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_stack_files_equal_the_built_ins():
    assert load_stack_file(ENGINE, ROOT / "configs" / "full.toml").identity() == FULL.identity()
    assert load_stack_file(ENGINE, ROOT / "configs" / "lean.toml").identity() == LEAN.identity()


@pytest.mark.parametrize("name", ["lean", "full", "full:v1", "installed"])
def test_a_stack_file_cannot_take_a_built_in_name(tmp_path, name):
    path = tmp_path / "mine.toml"
    path.write_text(f'name = "{name}"\nbase = "lean"\n')
    with pytest.raises(UsageError, match="name of a built-in stack"):
        load_stack_file(ENGINE, path)


def test_stack_file_overrides_one_group(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nbase = "lean"\ncustom_allreduce_impl = "v1"\n[groups.moe_ep]\npynccl = true\n')
    stack = load_stack_file(ENGINE, path)
    assert stack.name == "mine" and stack.option("custom_allreduce_impl") == "v1"
    assert stack.flags_for("moe_ep")["pynccl"] and not stack.flags_for("moe_ep")["custom_allreduce"]
    assert stack.flags_for("moe_tp") == LEAN.flags_for("moe_tp")


@pytest.mark.parametrize("text", ['[groups.tp]\npynccl = "yes"\n', '[groups.tp]\nnccl = true\n', 'colour = "red"\n',
                                  'custom_allreduce_impl = "v3"\n', 'base = "medium"\n'])
def test_bad_stack_files_are_usage_errors(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError):
        load_stack_file(ENGINE, path)


def test_v1_variants_of_the_built_ins():
    assert ENGINE.resolve_stack("full:v1").option("custom_allreduce_impl") == "v1"
    assert ENGINE.resolve_stack("lean").option("custom_allreduce_impl") == "v2"
    with pytest.raises(UsageError):
        ENGINE.resolve_stack("lean:v9")


def test_shipped_scenario_files_load():
    headline = load_scenario_file(ROOT / "configs" / "scenarios" / "moe-stacks.toml")
    assert [s.name for s in headline.scenarios] == ["tp4", "tp4-ep2-full", "tp4-ep2-lean"]
    knobs = load_scenario_file(ROOT / "configs" / "scenarios" / "nccl-knobs.toml")
    assert knobs.get("cumem-on").env == {"NCCL_CUMEM_ENABLE": "1"}
    assert all(s.layout == Layout(tp=4, ep=2) and s.stack == "full" for s in knobs.scenarios)


def test_sglang_preset_applies_unless_the_user_set_it():
    scenario = Scenario("s", Layout(tp=2))
    env = worker_environment(scenario, LaunchOptions(), base={"NCCL_CUMEM_ENABLE": "1"})
    assert env["NCCL_CUMEM_ENABLE"] == "1"  # the user's value wins, as in SGLang's engine
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["CUDA_DEVICE_MAX_CONNECTIONS"] == "8"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    none = worker_environment(Scenario("n", Layout(tp=2), env_preset="none"), LaunchOptions(), base={})
    assert "NCCL_CUMEM_ENABLE" not in none


def test_scenario_env_and_command_line_env_win():
    from memprobe.model.scenario import ScenarioSet, with_env

    own = Scenario("s", Layout(tp=2), env={"NCCL_BUFFSIZE": "1048576", "NCCL_CUMEM_ENABLE": "0"})
    [scenario] = with_env(ScenarioSet((own,), "s"), {"NCCL_MAX_CTAS": "4", "NCCL_CUMEM_ENABLE": "1"}).scenarios
    assert scenario.env == {"NCCL_BUFFSIZE": "1048576", "NCCL_CUMEM_ENABLE": "1", "NCCL_MAX_CTAS": "4"}  # --env wins
    env = worker_environment(scenario, LaunchOptions(), base={})
    assert env["NCCL_BUFFSIZE"] == "1048576" and env["NCCL_CUMEM_ENABLE"] == "1" and env["NCCL_MAX_CTAS"] == "4"
    recorded = recorded_environment({**env, "NCCL_VERSION": "2.28.3-1", "HOME": "/root"})
    assert "NCCL_VERSION" not in recorded and "HOME" not in recorded and recorded["NCCL_MAX_CTAS"] == "4"


def test_scenario_definition_hash_ignores_the_name_only():
    a = Scenario("a", Layout(tp=4, ep=2), stack="lean")
    assert a.definition_hash() == Scenario("b", Layout(tp=4, ep=2), stack="lean").definition_hash()
    assert a.definition_hash() != Scenario("a", Layout(tp=4, ep=2), stack="full").definition_hash()

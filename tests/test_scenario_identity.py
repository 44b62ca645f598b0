"""One scenario identity: every kind of scenario that run and compare make round-trips
through run.json -> baseline -> gate unchanged, and a stack file cannot pass for a built-in stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import synthetic_run
from memprobe.errors import UsageError
from memprobe.gate.baseline import build_baseline, load_baseline, write_baseline
from memprobe.gate.judge import judge
from memprobe.model.comparison import Comparison, ScenarioRun, load_comparison
from memprobe.engines.sglang.layout import SGLangLayout as Layout
from memprobe.engines.vllm import VLLMEngineLayout as VLLMLayout
from memprobe.model.run_files import write_run
from memprobe.model.scenario import Scenario, definition_differences, load_scenario_file

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = Layout(tp=4, ep=2)


def _stack_file(tmp_path: Path) -> str:
    path = tmp_path / "moe-pynccl-only.toml"
    path.write_text('name = "moe-pynccl-only"\nbase = "lean"\n[groups.moe_ep]\npynccl = true\n')
    return str(path)


def _kinds(tmp_path: Path) -> list[Scenario]:
    from_files = [*load_scenario_file(ROOT / "configs" / "scenarios" / "moe-stacks.toml").scenarios,
                  *load_scenario_file(ROOT / "configs" / "scenarios" / "nccl-knobs.toml").scenarios]
    return [
        Scenario("builtin-full", LAYOUT, stack="full"),
        Scenario("builtin-lean", LAYOUT, stack="lean"),
        Scenario("v1", LAYOUT, stack="full:v1"),
        Scenario("file", LAYOUT, stack=_stack_file(tmp_path)),
        Scenario("env", LAYOUT, stack="lean", env={"NCCL_BUFFSIZE": "1048576"}, env_preset="none", warmup="sweep"),
        Scenario("sglang", LAYOUT, stack="full", engine="sglang"),
        Scenario("sglang-installed", LAYOUT, stack="installed", engine="sglang", sglang=str(tmp_path / "site-0.5.11")),
        *from_files,
        # vLLM's layout holds switches and a name beside its widths (--moe, --all2all-backend)
        Scenario("vllm", VLLMLayout(tp=4, moe=True), stack="vllm", engine="vllm-ref", env_preset="vllm"),
        Scenario("vllm-shared-ep", VLLMLayout(tp=2, dp=2, moe=True, enable_expert_parallel=True,
                                              all2all_backend="deepep_low_latency"),
                 stack="shared-ep", engine="vllm-ref", env_preset="vllm"),
    ]


def test_every_kind_of_scenario_round_trips_through_run_json_baseline_and_gate(tmp_path):
    scenarios = _kinds(tmp_path)
    Path(_stack_file(tmp_path)).unlink()  # rebuilt scenarios must not need the stack file any more
    runs = []
    for scenario in scenarios:
        folder = tmp_path / "runs" / scenario.name
        run = synthetic_run(scenario)
        write_run(folder, run.record, run.readings)
        rebuilt = load_comparison(folder).runs[0]  # run.json -> scenario
        assert rebuilt.scenario.definition() == scenario.definition(), scenario.name
        assert rebuilt.scenario.definition_hash() == scenario.definition_hash()
        runs.append(rebuilt)
    comparison = Comparison("all", scenarios[0].name, runs)
    write_baseline(tmp_path / "baseline.json", build_baseline(comparison))
    baseline = load_baseline(tmp_path / "baseline.json")  # -> baseline
    for scenario in scenarios:  # all but the installed engine's site folder, a path of the measuring machine
        assert baseline.scenarios[scenario.name].scenario().definition() == {**scenario.definition(), "sglang": ""}
    again = [ScenarioRun(s, synthetic_run(s)) for s in baseline.scenario_set().scenarios]  # what a gate measures
    result = judge(baseline, Comparison("gate", scenarios[0].name, again))  # -> gate
    assert int(result.exit_code) == 0 and not result.incomparable, result.headline()


def test_identity_is_the_flags_not_the_name(tmp_path):
    full, file_full = Scenario("a", LAYOUT, stack="full"), Scenario("a", LAYOUT, stack=str(ROOT / "configs" / "full.toml"))
    assert file_full.definition_hash() == full.definition_hash()  # the built-in written out is the same measurement
    other = Scenario("a", LAYOUT, stack=_stack_file(tmp_path))
    assert other.definition_hash() != Scenario("a", LAYOUT, stack="lean").definition_hash()
    assert ("stack.groups.moe_ep.pynccl", False, True) in definition_differences(
        Scenario("a", LAYOUT, stack="lean").definition(), other.definition())
    assert Scenario("a", LAYOUT, stack="full:v1").definition_hash() != full.definition_hash()


def test_a_stack_file_named_like_a_built_in_is_one_line_exit_2(memprobe, tmp_path):
    (tmp_path / "lean.toml").write_text('name = "lean"\nbase = "full"\n')
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--stack", "lean.toml", "--quiet")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "name 'lean' is the name of a built-in stack" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lean.toml"]  # nothing created


def test_installed_stack_needs_the_sglang_engine():
    with pytest.raises(UsageError, match="needs engine sglang"):
        Scenario("a", LAYOUT, stack="installed")
    with pytest.raises(UsageError, match="needs engine sglang"):
        Scenario("a", LAYOUT, stack="lean", sglang="/opt/sglang")


def test_a_definition_from_an_older_memprobe_is_refused_with_the_way_out():
    old = {"name": "a", "layout": LAYOUT.as_dict(), "stack": "lean", "env_preset": "sglang", "env": {}, "warmup": "tiny"}
    with pytest.raises(UsageError, match="older memprobe.*baseline update --from"):
        Scenario.from_definition(old, "baseline.json")


@pytest.mark.e2e
def test_a_stack_file_run_round_trips_through_the_real_pipeline_and_a_re_measuring_gate(memprobe, replay_folder, capsys,
                                                                                         monkeypatch):
    """A baseline measured from a scenario with a stack file and env (the launch replayed from a recorded tp2 CPU
    launch: replay_support.py), the stack file deleted, and the gate measures the scenario again, with real
    torchrun on CPU, from the baseline alone."""
    from replay_support import healthy_script, replay
    from replay_support import memprobe as in_process

    tmp_path = replay_folder
    stack = _stack_file(tmp_path)
    (tmp_path / "s.toml").write_text(f'[[scenario]]\nname = "file"\ntp = 2\nstack = "{stack}"\n'
                                     'env = { NCCL_BUFFSIZE = "1048576" }\n')
    with monkeypatch.context() as patched:  # the baseline's launch only
        replay(patched, healthy_script("file"))
        code, _, stderr = in_process(capsys, "baseline", "update", "--scenarios", "s.toml", "--device", "cpu", "--out",
                                     "base.json", "--out-dir", "runs")
    assert code == 0, stderr
    [first] = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    recorded = json.loads(next(first.rglob("run.json")).read_text())
    assert recorded["definition"]["stack"]["resolved"]["groups"]["moe_ep"]["pynccl"] is True
    assert recorded["environment"]["nccl_env"]["NCCL_BUFFSIZE"] == "1048576"
    Path(stack).unlink()
    judged = memprobe("gate", "--baseline", "base.json", "--device", "cpu", "--out-dir", "gate-runs", "--junit-xml", "gate.xml")
    # host RSS moves by a few MiB between runs; the default +5% and +64 MiB absorb it
    assert judged.returncode == 0, judged.stdout + judged.stderr
    assert "PASS" in judged.stdout and (tmp_path / "gate.xml").is_file()
    assert "host memory (RSS) of each rank, measured with --device cpu" in judged.stdout  # the gate says what it judged
    [again] = [p for p in (tmp_path / "gate-runs").iterdir() if p.is_dir()]
    run_json = next(again.rglob("run.json"))
    assert json.loads(run_json.read_text())["definition"] == {**recorded["definition"]}

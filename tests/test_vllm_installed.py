"""``--engine vllm``: the installed vLLM's own start-up (memprobe/engines/vllm/{install,standins,real}.py).

The refusals, the stand-ins and the learnt stack run everywhere. The tests that run vLLM itself need
``MEMPROBE_TEST_VLLM_SITE``: a colon-separated ``PYTHONPATH`` holding vLLM 0.33.0 and whatever else it needs
(``python -m pip install --no-deps --target SITE vllm==0.33.0`` beside memprobe's ``vllm`` extra is enough); they
are skipped with that reason when it is unset. They learn eleven layouts cheaply (vLLM imported once, one forked
process per rank: tests/vllm_installed_capture.py) and check them against memprobe's reproduction (``vllm-ref``),
then make one real ``memprobe run --device cpu --engine vllm``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from memprobe import engines
from memprobe.engines.vllm import communicators as rules
from memprobe.engines.vllm import install, standins
from memprobe.engines.vllm.real import PREFIX
from memprobe.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
SITE = os.environ.get("MEMPROBE_TEST_VLLM_SITE", "")
needs_vllm = pytest.mark.skipif(not SITE, reason="set MEMPROBE_TEST_VLLM_SITE: a PYTHONPATH holding vLLM 0.33.0 "
                                                  "(pip install --no-deps --target SITE vllm==0.33.0)")
VLLM = engines.get("vllm-ref").engine
PIP_LINE = "python -m pip install --no-deps vllm==0.33.0"


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------- refusals


def test_no_vllm_is_exit_2_with_the_pip_line_before_anything_is_launched(memprobe, tmp_path):
    line = _one_line(memprobe("run", "--device", "cpu", "--engine", "vllm", "--tp", "2", "--moe",
                              "--out-dir", str(tmp_path / "runs"), env={"PYTHONPATH": str(ROOT)}))
    assert PIP_LINE in line and "--engine vllm-ref" in line
    assert not (tmp_path / "runs").exists()


def _fake_site(root: Path, parallel_state: str) -> Path:
    package = root / "vllm"
    (package / "distributed" / "device_communicators").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_version.py").write_text("__version__ = version = '0.33.0'\n")
    (package / "distributed" / "parallel_state.py").write_text(parallel_state)
    (package / "distributed" / "device_communicators" / "cuda_communicator.py").write_text("class CudaCommunicator:\n    pass\n")
    (package / "distributed" / "device_communicators" / "pynccl.py").write_text("class PyNcclCommunicator:\n    pass\n")
    return root


def test_a_broken_install_names_the_line_that_reinstalls_it(memprobe, tmp_path):
    site = _fake_site(tmp_path / "site", "def init_distributed_environment(): pass\nclass GroupCoordinator: pass\n")
    with pytest.raises(UsageError, match="lacks ensure_model_parallel_initialized, set_custom_all_reduce"):
        install.vllm_installation({"PYTHONPATH": str(site)})
    line = _one_line(memprobe("run", "--device", "cpu", "--engine", "vllm", "--vllm", str(site), "--tp", "2",
                              "--out-dir", str(tmp_path / "runs")))
    assert f"{PIP_LINE} --force-reinstall" in line and not (tmp_path / "runs").exists()


def test_a_whole_install_is_read_from_its_sources(tmp_path):
    text = "\n".join(f"def {name}(): pass" for name in install.REQUIRED_API[0][1] if name != "GroupCoordinator")
    site = _fake_site(tmp_path / "site", text + "\nclass GroupCoordinator: pass\n")
    found = install.vllm_installation({"PYTHONPATH": str(site)}, site=str(site))
    assert (found.engine, found.version, found.path, found.site) == ("vllm", "0.33.0", str(site / "vllm"), str(site))
    assert len(found.parallel_state_sha256) == 64 and set(found.to_json()) == {"version", "path", "parallel_state_sha256"}


@pytest.mark.parametrize("arguments,message", [
    (("run", "--engine", "vllm", "--vllm", "/nonexistent", "--tp", "2"), "--vllm /nonexistent: not a vLLM installation"),
    (("run", "--engine", "vllm-ref", "--vllm", "/nonexistent", "--tp", "2"), "--vllm needs --engine vllm"),
    (("run", "--engine", "sglang", "--vllm", "/nonexistent", "--tp", "2"), "--vllm needs --engine vllm"),
    (("run", "--engine", "vllm", "--stack", "shared-ep", "--tp", "2", "--moe"), "(stack 'shared-ep' is for engine vllm-ref)"),
    (("compare", "--engine", "memprobe", "--vllm", "a=/nonexistent", "--tp", "2"), "--vllm LABEL=SITE adds vllm"),
    (("estimate", "--engine", "vllm-ref", "--vllm", "/nonexistent", "--tp", "2"), "--vllm needs --engine vllm"),
])
def test_site_and_stack_refusals(memprobe, tmp_path, arguments, message):
    device = ("--device", "cpu", "--out-dir", str(tmp_path / "runs")) if arguments[0] != "estimate" else ()
    line = _one_line(memprobe(*arguments, *device))
    assert message in line
    assert not (tmp_path / "runs").exists()


def test_cpu_requirements_name_what_is_missing_and_the_pip_line(monkeypatch):
    assert install.requirements_problem({}, "0.33.0") is None  # memprobe's dev environment has them all
    monkeypatch.setitem(install.REQUIREMENTS, "memprobe_no_such_module", "memprobe-no-such-package")
    problem = install.requirements_problem({}, "0.33.0")
    assert problem is not None and "python -m pip install memprobe-no-such-package" in problem
    assert "(or, in memprobe's clone, pip install -e '.[vllm]')" in problem


# --------------------------------------------------------------------------------------------- stand-ins


def test_every_stand_in_says_where_vllm_imports_it():
    assert all(".py:" in where for where in standins.MODULES.values()), standins.MODULES


STAND_IN_PROBE = """
import json, sys
from memprobe.engines.vllm import standins
standins.install()
import psutil, cachetools, json as real_json
from openai.types.chat import ChatCompletionContentPartImageParam as Part
from pydantic import TypeAdapter

class Cache(cachetools.LRUCache):
    pass

annotation = Cache[str, int]  # vLLM 0.33.0 utils/cache.py annotates with it
adapter = TypeAdapter(Part | str)  # renderers/chat_utils/chat_message.py:89 builds one at import
print(json.dumps({"stood_in": standins.stood_in(), "psutil_hollow": getattr(psutil, "__memprobe_standin__", False),
                  "json_real": not hasattr(real_json, "__memprobe_standin__"), "note": standins.note()}))
"""


def test_stand_ins_replace_only_missing_modules_and_say_so_in_one_line():
    result = subprocess.run([sys.executable, "-c", STAND_IN_PROBE], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["psutil_hollow"] is True and found["json_real"] is True
    assert found["stood_in"] == ["cachetools", "openai", "psutil"]  # sorted: import order differs between ranks
    assert found["note"].startswith("vLLM's import chain could not import cachetools, openai, psutil here")


# ------------------------------------------------------------------------------------------ learnt stack


def _decisions(**asked: bool) -> dict[str, str]:
    keys = {"pynccl": "vllm:pynccl", "mq_broadcaster": "vllm:use_message_queue_broadcaster"}
    words = {"vllm:use_device_communicator": "True"}
    for kind, on in asked.items():
        if kind == "pynccl":
            words["vllm:pynccl"] = "constructed (disabled)" if on else "not constructed"
        else:
            words[keys.get(kind) or install._ASKED_BY[kind]] = str(on)
    return words


def _run_of(communicators: dict[str, dict[str, str]], version: str = "0.33.0") -> SimpleNamespace:
    ranks = [SimpleNamespace(rank=rank, communicators=communicators) for rank in range(2)]
    record = SimpleNamespace(ranks=ranks, environment={"vllm": {"version": version}}, run_id="r", device="cpu")
    return SimpleNamespace(record=record, path=None)


def test_the_learnt_stack_is_what_vllm_asked_for_and_the_estimate_builds_only_that():
    tp = _decisions(pynccl=True, symm_mem=True, flashinfer_allreduce=True, custom_allreduce=True, mq_broadcaster=True)
    patched_ep = _decisions(pynccl=False, all2all_manager=False)  # a vLLM whose EP group reuses TP's PyNccl
    stack = VLLM.learn_stack(_run_of({"tp": tp, "ep": patched_ep}))
    assert stack.name == "installed" and stack.option("release_line") == "0.33"
    assert stack.flags_for("tp")["custom_allreduce"] and stack.flags_for("tp")["mq_broadcaster"]
    assert not stack.flags_for("ep")["pynccl"]
    from memprobe.engines.api import Facts, Verdict

    plan = VLLM.plan(VLLM.layout({"tp": 2, "moe": True}))
    verdicts = {d.kind: d.verdict for d in VLLM.decide(plan.group("ep"), stack, Facts(width=2))}
    assert verdicts["pynccl"] is Verdict.OFF
    stock = VLLM.learn_stack(_run_of({"tp": tp, "ep": _decisions(pynccl=True)}))
    assert {d.kind: d.verdict for d in VLLM.decide(plan.group("ep"), stock, Facts(width=2))}["pynccl"] is Verdict.BUILT
    with pytest.raises(UsageError, match="recorded no decisions of vLLM's own"):
        VLLM.learn_stack(_run_of({"tp": {"pynccl": "built"}}))


def test_a_cpu_run_of_the_installed_vllm_shows_what_its_code_asked_for_as_the_reference_does():
    """On --device cpu the installed vLLM records an asked-for PyNccl as not built for want of a device (real.py's
    words); the reports take it as asked for, as a reference stack's flag says, so both rows read "skipped", not
    one "off" (off: the stack does not ask for it)."""
    from memprobe.engines.api import Decision, Facts, Verdict
    from memprobe.engines.vllm.real import NO_DEVICE_REASON, NOT_ASKED

    words = {**_decisions(pynccl=True),
             "pynccl": Decision("ep", "pynccl", Verdict.NO_DEVICE, reason=f"{NO_DEVICE_REASON}; vLLM's code asked for it").text(),
             "custom_allreduce": Decision("ep", "custom_allreduce", Verdict.OFF, reason=NOT_ASKED).text(),
             "all2all_manager": Decision("ep", "all2all_manager", Verdict.BUILT, implementation="vLLM 0.33.0").text()}
    built = install.built_by_run(_run_of({"ep": words}))["ep"]
    assert built == {"pynccl": True, "custom_allreduce": False, "all2all_manager": True}
    plan = VLLM.plan(VLLM.layout({"tp": 2, "moe": True}))
    reference = {d.kind: d.verdict for d in VLLM.decide(plan.group("ep"), VLLM.resolve_stack("vllm"),
                                                         Facts(width=2, device="cpu"))}
    assert reference["pynccl"] is Verdict.NO_DEVICE and VLLM.resolve_stack("vllm").flags_for("ep")["pynccl"]


def test_release_lines_of_installed_versions():
    assert [install.release_line_of(v) for v in ("0.33.0", "0.34.1", "0.11.0", "0.20.2", "0.10.2")] == \
        ["0.33", "0.33", "0.11-0.2x", "0.11-0.2x", "0.10"]


def test_the_gate_s_update_command_carries_the_vllm_site_and_the_verdict_says_whose_code():
    from memprobe.gate.guards import guards, update_arguments
    from memprobe.model.scenario import Scenario

    arguments = update_arguments(estimate=True, sites={"sglang": "", "vllm": "/opt/vllm-site"}, scenarios=["tp4-moe.vllm"],
                                 device="cuda", calibration=None, gpus_per_node=4, from_results=False)
    assert arguments == ["--scenario", "tp4-moe.vllm", "--estimate", "--gpus-per-node", "4", "--vllm", "/opt/vllm-site"]
    layout = VLLM.layout({"tp": 4, "moe": True})
    reference = Scenario(name="r", layout=layout, engine="vllm-ref", stack="vllm")
    assert guards([reference]) == "memprobe's reproduction of vLLM 0.33.0 (your engine's code is not run)"
    installed = Scenario(name="i", layout=layout, engine="vllm", stack="installed")
    assert guards([installed]).startswith("the installed vLLM ")


def test_compare_on_both_vllm_engines_runs_one_installed_scenario_per_layout():
    from memprobe.api.measuring import compare_scenarios
    from memprobe.api.options import CompareOptions

    scenario_set = compare_scenarios(CompareOptions(tp=2, moe=True, engine="vllm-ref,vllm"))
    assert [(s.name, s.engine, s.stack) for s in scenario_set.scenarios] == [
        ("tp2-moe-vllm", "vllm-ref", "vllm"), ("tp2-moe.vllm", "vllm", "installed"),
        ("tp2-moe-shared-ep", "vllm-ref", "shared-ep")]


def test_a_width_the_engine_lacks_names_the_engine_as_given():
    from memprobe import api
    from memprobe.api.measuring import compare_scenarios
    from memprobe.api.options import CompareOptions

    for engine in ("vllm-ref", "vllm"):
        with pytest.raises(UsageError, match=rf"^--ep is not a flag of engine {engine} \(its widths: --tp, "):
            api.estimate(tp=8, ep=4, engine=engine)
    with pytest.raises(UsageError, match=r"^--ep is not a flag of engine vllm-ref \("):
        compare_scenarios(CompareOptions(tp=2, ep=2, engine="vllm-ref"))
    with pytest.raises(UsageError, match=r"^--dp is not a flag of engine sglang-ref \("):
        api.estimate(tp=2, dp=2, engine="sglang-ref")


def test_a_gate_on_a_baseline_of_the_installed_vllm_without_it_says_the_baseline_asks_and_vllm_site_gives_it(
        memprobe, tmp_path):
    from memprobe import api
    from memprobe.gate.baseline import build_baseline, portable_definition
    from memprobe.model.scenario import on_own_flags

    comparison = api.estimate(tp=2, moe=True, engine="vllm-ref")
    document = build_baseline(comparison)
    item = comparison.runs[0]  # its estimate stands for the installed vLLM's: the gate stops before judging it
    installed = on_own_flags(item.scenario, "vllm")
    entry = document["scenarios"].pop(item.scenario.name)
    entry["definition"], entry["definition_hash"] = portable_definition(installed), installed.definition_hash()
    document["scenarios"] = {installed.name: entry}
    (tmp_path / "b.json").write_text(json.dumps(document))
    line = _one_line(memprobe("gate", "--estimate", "--baseline", "b.json", env={"PYTHONPATH": str(ROOT)}))
    assert line == ("memprobe: error: the baseline's scenario tp2-moe.vllm asks for the installed vLLM (engine vllm), "
                    "which this Python does not import: --vllm SITE gives it, a site folder (make one with: "
                    f"{PIP_LINE} --target SITE)")


def _whole_site(root: Path, version: str = "0.33.0") -> Path:
    text = "\n".join(f"def {name}(): pass" for name in install.REQUIRED_API[0][1] if name != "GroupCoordinator")
    site = _fake_site(root, text + "\nclass GroupCoordinator: pass\n")
    (site / "vllm" / "_version.py").write_text(f"__version__ = version = '{version}'\n")
    return site


def test_compare_takes_a_bare_site_labelled_by_its_release_as_run_takes_it(tmp_path):
    from memprobe.api.measuring import compare_scenarios
    from memprobe.api.options import CompareOptions

    bare = _whole_site(tmp_path / "a")
    dev = _whole_site(tmp_path / "b", "0.11.1.dev3+g0a1b2c")
    old = _whole_site(tmp_path / "c", "0.10.2")
    scenario_set = compare_scenarios(CompareOptions(tp=2, moe=True, engine="vllm-ref",
                                                    vllm=(str(bare), f"old={old}", str(dev))))
    installed = [(s.name, s.engine, s.stack, s.sglang) for s in scenario_set.scenarios if s.engine == "vllm"]
    assert installed == [("tp2-moe.vllm-0.33.0", "vllm", "installed", str(bare)),
                         ("tp2-moe.vllm-old", "vllm", "installed", str(old)),
                         ("tp2-moe.vllm-0.11.1.dev3-g0a1b2c", "vllm", "installed", str(dev))]
    with pytest.raises(UsageError, match="given twice"):
        compare_scenarios(CompareOptions(tp=2, moe=True, engine="vllm-ref", vllm=(str(bare), f"0.33.0={dev}")))
    with pytest.raises(UsageError, match=r"is neither LABEL=PATH nor an existing folder \(e.g. --vllm 0.33.0="):
        compare_scenarios(CompareOptions(tp=2, moe=True, engine="vllm-ref", vllm=(str(tmp_path / "nowhere"),)))
    (bare / "vllm" / "_version.py").unlink()
    with pytest.raises(UsageError, match=f"cannot be read; give it a label: --vllm LABEL={bare}$"):
        compare_scenarios(CompareOptions(tp=2, moe=True, engine="vllm-ref", vllm=(str(bare),)))


def test_compare_on_the_installed_vllm_without_an_importable_one_says_what_the_site_adds(memprobe, tmp_path):
    site = _whole_site(tmp_path / "site")
    line = _one_line(memprobe("compare", "--device", "cpu", "--engine", "vllm", "--tp", "2", "--moe", "--vllm", str(site),
                              "--out-dir", str(tmp_path / "runs"), env={"PYTHONPATH": str(ROOT)}))
    assert line == ("memprobe: error: --engine vllm runs tp2-moe.vllm on the vllm this Python imports, and none is "
                    "found; --vllm SITE adds a scenario of its own for each site: compare the sites with --engine "
                    "vllm-ref --vllm SITE, or make vllm importable (PYTHONPATH)")
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------- the installed vLLM itself

#: tp, pp, dp, dcp, pcp, EP on/off, EPLB, MoE/dense, custom all-reduce off; world sizes 2 to 8
LAYOUTS = [
    {"tp": 2}, {"tp": 2, "moe": True}, {"tp": 2, "moe": True, "enable_expert_parallel": True},
    {"tp": 2, "dp": 2, "moe": True, "enable_expert_parallel": True, "enable_eplb": True},
    {"tp": 2, "pp": 2, "moe": True}, {"tp": 4, "dcp": 2},
    {"tp": 2, "pcp": 2, "moe": True, "enable_expert_parallel": True},
    {"tp": 2, "dcp": 2, "disable_custom_all_reduce": True},
    {"tp": 1, "pp": 2, "dp": 2, "moe": True, "enable_expert_parallel": True},
    {"tp": 2, "pp": 2, "dp": 2, "moe": True, "enable_expert_parallel": True, "enable_eplb": True},
    {"tp": 4, "moe": True, "enable_expert_parallel": True, "enable_eplb": True},
]


def _site_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), SITE))}


@pytest.fixture(scope="module")
def captured() -> dict[str, dict]:
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "vllm_installed_capture.py"), json.dumps(LAYOUTS)],
                            capture_output=True, text=True, timeout=600, env=_site_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return {json.dumps(item["widths"], sort_keys=True): item for item in json.loads(result.stdout)}


def expected_decisions(group: rules.VLLMGroup, layout: rules.VLLMLayout) -> dict[str, str]:
    """What vLLM's code decides for a group, by memprobe's reproduction of 0.33.0 (its rules, on any GPU: these
    gates read only the group's name, the flags and the environment)."""
    decided = rules.decide(layout).for_group(group.name)
    built = {d.kind for d in decided.decisions if d.built} if decided else set()
    expected = {PREFIX + "use_device_communicator": str(group.use_device_communicator),
                PREFIX + "use_message_queue_broadcaster": str(group.use_message_queue_broadcaster),
                PREFIX + "passed_use_all2all": str(group.use_all2all),
                PREFIX + "device_communicator": "CudaCommunicator" if group.builds_device_communicator else "none",
                PREFIX + "pynccl": "constructed (disabled)" if rules.PYNCCL in built else "not constructed",
                PREFIX + "mq_broadcaster": "built" if group.builds_mq_broadcaster else "none"}
    if group.builds_device_communicator:
        gates = rules.cuda_gates(group, layout)
        expected.update({PREFIX + "use_custom_allreduce": str(gates.use_custom_allreduce),
                         PREFIX + "use_torch_symm_mem": str(gates.use_torch_symm_mem),
                         PREFIX + "use_flashinfer_allreduce": str(gates.use_flashinfer_allreduce),
                         PREFIX + "use_all2all": str(gates.use_all2all),
                         PREFIX + "all2all_manager": "AgRsAll2AllManager" if gates.use_all2all else "none"})
    return expected


@needs_vllm
@pytest.mark.parametrize("widths", LAYOUTS, ids=[VLLM.layout(w).slug() for w in LAYOUTS])
def test_installed_vllm_builds_the_reference_s_groups_rank_lists_and_decisions(captured, widths):
    item = captured[json.dumps(widths, sort_keys=True)]
    layout = VLLM.layout(widths)
    assert item["world_size"] == layout.world_size and len(item["ranks"]) == layout.world_size, item
    launch = layout.vllm()
    planned = [group for group in rules.plan(launch).groups if not group.is_alias and group.name != "world"]
    for rank, result in item["ranks"].items():
        assert "error" not in result, result.get("error")
        assert not [w for w in result["warnings"] if "other groups" in w], result["warnings"]
        communicators = result["communicators"]
        assert list(communicators) == [group.name for group in planned], rank  # vLLM's creation order
        for group in planned:
            recorded = communicators[group.name]
            assert json.loads(recorded[PREFIX + "group_ranks"]) == [list(ranks) for ranks in group.rank_lists]
            mine = {key: value for key, value in recorded.items() if key.startswith(PREFIX) and key != PREFIX + "group_ranks"}
            assert mine == expected_decisions(group, launch), (rank, group.name)
        # every step of every group was sampled, in the order memprobe's reports expect
        from memprobe.model.steps import group_steps

        assert [step[:2] for step in result["steps"]] == [["world", "world"]] + [
            [group.name, step] for group in planned for step in group_steps(VLLM.kind_names)]


@needs_vllm
def test_a_real_cpu_run_of_the_installed_vllm_and_its_estimate(memprobe, tmp_path, request):
    from memprobe.estimate.calibration import find_calibration
    from memprobe.estimate.model import Topology, estimate_run
    from memprobe.model.run_files import load_run
    from memprobe.model.scenario import Scenario

    site = SITE.split(os.pathsep)[0]
    scratch = Path(tempfile.mkdtemp(prefix="mpt-", dir="/tmp"))  # the user's TMPDIR (short: sockets live there)
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    result = memprobe("run", "--device", "cpu", "--engine", "vllm", "--vllm", site, "--tp", "2", "--moe",
                      "--out-dir", str(tmp_path / "runs"), "--run-id", "r", "-q",
                      env={"PYTHONPATH": os.pathsep.join((str(ROOT), SITE)), "TMPDIR": str(scratch)}, timeout=300)
    assert result.returncode == 0, result.stderr
    # vLLM's MQ broadcaster leaves IPC sockets in the workers' temp folder: memprobe's, removed with the launch
    assert list(scratch.iterdir()) == []
    run = load_run(tmp_path / "runs" / "r")
    assert run.record.status == "complete" and run.record.engine == "vllm" and run.record.stack_name == "installed"
    recorded = run.record.environment["vllm"]
    assert recorded["version"] == "0.33.0" and Path(recorded["path"]).parent == Path(site).resolve()
    plan = VLLM.plan(VLLM.layout({"tp": 2, "moe": True}))
    for info in run.record.ranks:
        for group in plan.built_groups():
            if group.name != "world":
                assert json.loads(info.communicators[group.name][PREFIX + "group_ranks"]) == \
                    [list(ranks) for ranks in group.rank_lists]
    # its MoE table names the EP group's PyNccl as the reference's CPU rows do: skipped (no device), not off
    from memprobe.model.comparison import load_comparison
    from memprobe.reports._model import moe_cell, summarize

    (summary,) = summarize(load_comparison(tmp_path / "runs" / "r"))
    assert moe_cell(summary, "ep", "pynccl") == ("skipped", None)
    # the installed vLLM's own decisions estimate what memprobe's reproduction of 0.33.0 estimates
    calibration = find_calibration(None, None)
    topology = Topology.for_world(2, 2, None)
    layout = VLLM.layout({"tp": 2, "moe": True})
    mine = estimate_run(Scenario(name="i", layout=layout, engine="vllm", stack="installed", env_preset="vllm"),
                        topology, calibration, VLLM.learn_stack(run))
    reference = estimate_run(Scenario(name="r", layout=layout, engine="vllm-ref", stack="vllm", env_preset="vllm"),
                             topology, calibration)
    assert [(r.rank, r.group, r.step, r.primary_bytes) for r in mine.all_readings()] == \
        [(r.rank, r.group, r.step, r.primary_bytes) for r in reference.all_readings()]


def test_a_scenario_file_names_the_vllm_site_and_runs_vllm_s_own_stack(tmp_path):
    from memprobe.model.scenario import load_scenario_file

    path = tmp_path / "s.toml"
    path.write_text('baseline = "a"\n[[scenario]]\nname = "a"\ntp = 2\nmoe = true\nengine = "vllm"\nvllm = "/opt/v"\n')
    (scenario,) = load_scenario_file(path).scenarios
    assert (scenario.engine, scenario.stack, scenario.sglang) == ("vllm", "installed", "/opt/v")
    path.write_text(path.read_text().replace('engine = "vllm"', 'engine = "vllm-ref"'))
    with pytest.raises(UsageError, match="needs engine vllm"):
        load_scenario_file(path)

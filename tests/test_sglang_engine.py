"""``--engine sglang``: API detection per release, flag mapping, error paths, and (where SGLang is
importable) real CPU runs.

* API detection reads the real release sources from the offline data (``$SGLANG_OFFLINE_DATA`` or
  ``.sglang/`` at the repo root, see tools/sglang_offline/NOTES.md); skipped when they are absent.
* Real runs need installed sites (``bash tools/sglang_offline/install.sh PYTHON SITE RELEASE``):
  ``MEMPROBE_TEST_SGLANG_SITE`` (0.5.23) and ``MEMPROBE_TEST_SGLANG_SITES`` (``0.5.10.post1=SITE,0.5.11=SITE``);
  ``MEMPROBE_TEST_SGLANG_EXTRA_PATH`` is added to the workers' path (e.g. torchvision/transformers for 0.5.1x).
  SGLang is not a dependency of memprobe, so default CI skips them.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from memprobe.model.scenario import with_engines
from memprobe.errors import UsageError
from memprobe.engines.sglang.layout import SGLangLayout as Layout
from memprobe.model.run_files import load_run
from memprobe.model.scenario import Scenario, ScenarioSet, headline_scenarios, parse_sites, with_site
from memprobe.engines.sglang.real import forced_flags, keyword_widths, sglang_widths
from memprobe.engines.sglang.install import check_site, sglang_installation
from memprobe.engines.stacks import load_stack_file
from memprobe.engines.sglang import ENGINE

ROOT = Path(__file__).resolve().parent.parent
SGLANG_SITE = os.environ.get("MEMPROBE_TEST_SGLANG_SITE", "")
SGLANG_SITES = dict(item.split("=", 1) for item in os.environ.get("MEMPROBE_TEST_SGLANG_SITES", "").split(",") if "=" in item)
EXTRA_PATH = os.environ.get("MEMPROBE_TEST_SGLANG_EXTRA_PATH", "")
OFFLINE_DATA = Path(os.environ.get("SGLANG_OFFLINE_DATA") or ROOT / ".sglang")
SOURCES = ("sglang/__init__.py", "sglang/_version.py", "sglang/srt/distributed/parallel_state.py", "sglang/srt/runtime_context.py",
           "sglang/srt/distributed/device_communicators/pynccl.py",
           "sglang/srt/distributed/device_communicators/custom_all_reduce.py")
# sha256 of each release's parallel_state.py as published in its wheel's RECORD
PUBLISHED_PARALLEL_STATE = {
    "0.5.10.post1": "1eff90aa1b9be573fb37af8ac94c2cae452400d21c21f7da6cc8c7076a969284",
    "0.5.11": "6b2232effdd1b3ae72526990df3b74886d5e765b29384597a373130b714998ca",
    "0.5.23": "bd356b92933a4e5eb08f22cf3eda8b788cc09efbbb2fb421745803847b8d2f5c",
}


def test_installed_forces_nothing_and_the_other_stacks_force_every_group_they_name():
    installed, lean, full = ENGINE.resolve_stack("installed"), ENGINE.resolve_stack("lean"), ENGINE.resolve_stack("full")
    for group in ("tp", "moe_ep", "moe_tp", "pp", "attn_cp"):
        assert forced_flags(installed, group) == {}
    assert forced_flags(lean, "moe_ep") == {"use_pynccl": False, "use_custom_allreduce": False}  # PR #22515 on 0.5.10.post1
    assert forced_flags(full, "moe_tp") == {"use_pynccl": True, "use_custom_allreduce": True}  # the MoE comms back on 0.5.11
    assert forced_flags(full, "tp") == forced_flags(lean, "tp") == {"use_pynccl": True, "use_custom_allreduce": True}
    assert forced_flags(lean, "anonymous") == {}  # a group the stack does not name keeps SGLang's flags


def test_a_stack_file_forces_the_flags_it_gives():
    stack = load_stack_file(ENGINE, ROOT / "configs" / "regressions" / "lean.toml")
    assert stack.name == "lean-reverted" and stack.source
    assert forced_flags(stack, "moe_ep") == {"use_pynccl": True, "use_custom_allreduce": True}
    assert forced_flags(stack, "world") == {"use_pynccl": False, "use_custom_allreduce": False}


def test_widths_follow_each_api_s_names():
    layout = Layout(tp=8, ep=4, pp=2)
    widths = sglang_widths(layout)
    assert widths["tp_size"] == 8 and widths["moe_ep_size"] == 4 and widths["pp_size"] == 2
    assert widths["moe_tp_size"] == 2 and widths["attn_tp_size"] == 8 and widths["attn_dcp_size"] == 1
    keywords = keyword_widths(layout)
    assert keywords["tensor_model_parallel_size"] == 8 and keywords["expert_model_parallel_size"] == 4
    assert keywords["pipeline_model_parallel_size"] == 2 and keywords["moe_data_model_parallel_size"] == 1


def _release_sources(release: str, site: Path) -> Path:
    installed = SGLANG_SITES.get(release) or (SGLANG_SITE if release == "0.5.23" else "")
    if installed:  # a release installed as .ci/run installs it (pip install --no-deps --target SITE sglang==X)
        import shutil

        for name in (name for name in SOURCES if (Path(installed) / name).is_file()):  # 0.5.1x: no runtime_context
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(installed) / name, site / name)
        return site
    archive = OFFLINE_DATA / release / "sglang-src.tar.xz"
    if not archive.is_file():
        pytest.skip(f"no {archive}: the offline SGLang data (tools/sglang_offline/make_data.sh) is not here")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name in SOURCES]
        tar.extractall(site, members=members, filter="data")
    return site


@pytest.mark.parametrize("release,api,custom_allreduce", [
    ("0.5.10.post1", "kwargs", "v1"), ("0.5.11", "kwargs", "v1"), ("0.5.23", "runtime_context", "v2")])
def test_the_api_of_each_supported_release_is_read_from_its_sources(tmp_path, release, api, custom_allreduce):
    site = _release_sources(release, tmp_path)
    found = sglang_installation({"PYTHONPATH": str(site)})
    assert (found.version, found.api, found.custom_allreduce_default) == (release, api, custom_allreduce)
    assert Path(found.path) == site / "sglang"
    assert found.parallel_state_sha256 == PUBLISHED_PARALLEL_STATE[release]
    assert found.to_json()["path"] == str(site / "sglang")


def _fake_sglang(root: Path, version: str = "0.6.0", initialize: str = "backend=None",
                 runtime_context: bool = False, drop: str = "") -> Path:
    package = root / "sglang"
    (package / "srt" / "distributed" / "device_communicators").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_version.py").write_text(f"__version__ = version = '{version}'\n")
    functions = ["init_distributed_environment", "init_model_parallel_group", "get_world_group", "set_custom_all_reduce"]
    text = "".join(f"def {name}(*args, **kwargs): ...\n" for name in functions if name != drop)
    (package / "srt" / "distributed" / "parallel_state.py").write_text(
        text + f"def initialize_model_parallel({initialize}): ...\n")
    (package / "srt" / "distributed" / "device_communicators" / "pynccl.py").write_text("class PyNcclCommunicator: ...\n")
    (package / "srt" / "distributed" / "device_communicators" / "custom_all_reduce.py").write_text(
        "def dispatch_custom_allreduce(): ...\n")
    if runtime_context:
        (package / "srt" / "runtime_context.py").write_text(
            "class Parallel:\n    def override_permanently(self, **values): ...\ndef get_parallel(): ...\n")
    return root


def test_both_api_styles_are_told_apart_without_importing(tmp_path):
    kwargs = _fake_sglang(tmp_path / "a", initialize="tensor_model_parallel_size=1, backend=None")
    assert sglang_installation({"PYTHONPATH": str(kwargs)}).api == "kwargs"
    context = _fake_sglang(tmp_path / "b", runtime_context=True)
    assert sglang_installation({"PYTHONPATH": str(context)}).api == "runtime_context"


def test_an_unknown_api_is_one_line_naming_what_is_missing(tmp_path):
    site = _fake_sglang(tmp_path / "a")  # widths neither as keywords nor through runtime_context
    with pytest.raises(UsageError, match=r"^--engine sglang: SGLang 0.6.0 \(.*\) has an unknown parallel-state API: "
                                         r"initialize_model_parallel takes no tensor_model_parallel_size and "
                                         r"srt/runtime_context.py lacks get_parallel\(\).override_permanently$"):
        sglang_installation({"PYTHONPATH": str(site)})
    site = _fake_sglang(tmp_path / "b", runtime_context=True, drop="init_model_parallel_group")
    with pytest.raises(UsageError, match=r"srt/distributed/parallel_state.py lacks init_model_parallel_group$"):
        sglang_installation({"PYTHONPATH": str(site)})


def test_missing_sglang_is_exit_2_before_launch(memprobe, tmp_path, monkeypatch):
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--engine", "sglang", env={"PYTHONPATH": str(ROOT)})
    if SGLANG_SITE or _importable_elsewhere():
        pytest.skip("SGLang is installed here")
    assert result.returncode == 2
    assert result.stderr.strip() == ("memprobe: error: --engine sglang needs SGLang installed (pip install sglang, "
                                     "or --sglang SITE_FOLDER); it was not found; on a CPU runner: python -m pip install --no-deps sglang")
    assert not (tmp_path / "memprobe-runs").exists()


def test_an_sglang_path_that_is_not_one_is_exit_2_before_launch(memprobe, tmp_path):
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--engine", "sglang", "--sglang", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"memprobe: error: --sglang {tmp_path}: not an SGLang installation "
                                     f"(no sglang/srt/distributed/parallel_state.py)")
    result = memprobe("compare", "--device", "cpu", "--tp", "2", "--sglang", "old")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is neither LABEL=PATH nor an existing folder" in result.stderr
    result = memprobe("gate", "--baseline", str(ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json"),
                      "--device", "cpu", "--sglang", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "not an SGLang installation" in result.stderr
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--sglang", str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip() == "memprobe: error: --sglang needs --engine sglang"
    scenarios = tmp_path / "s.toml"
    scenarios.write_text(f'[[scenario]]\nname = "real"\ntp = 2\nengine = "sglang"\nstack = "installed"\nsglang = "{tmp_path}"\n')
    result = memprobe("compare", "--device", "cpu", "--scenarios", str(scenarios))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"memprobe: error: scenario real: sglang {tmp_path}: not an SGLang installation "
        f"(no sglang/srt/distributed/parallel_state.py)")
    assert not (tmp_path / "memprobe-runs").exists()


def test_an_sglang_with_an_unknown_api_is_exit_2_before_launch(memprobe, tmp_path):
    site = _fake_sglang(tmp_path / "site", version="0.9.0")
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--engine", "sglang", "--sglang", str(site), "--stack", "installed")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "SGLang 0.9.0" in result.stderr and "unknown parallel-state API" in result.stderr
    assert not (tmp_path / "memprobe-runs").exists()


def test_each_installation_is_one_more_scenario_of_the_moe_layout(tmp_path):
    sites = parse_sites(["0.5.10.post1=/opt/a", "0.5.11=/opt/b"])
    scenario_set = headline_scenarios("memprobe", {"tp": 4, "ep": 2}, stacks=["full", "lean"], sglang_sites=sites)
    names = [s.name for s in scenario_set.scenarios]
    assert names == ["tp4", "tp4-ep2-full", "tp4-ep2-lean", "tp4-ep2.sglang-0.5.10.post1", "tp4-ep2.sglang-0.5.11"]
    real = scenario_set.get("tp4-ep2.sglang-0.5.11")
    assert (real.engine, real.stack, real.sglang, real.layout) == ("sglang", "installed", "/opt/b", Layout(tp=4, ep=2))
    both = with_engines(scenario_set, ["memprobe", "sglang"])  # the real ones are not doubled
    assert [s.name for s in both.scenarios].count("tp4-ep2.sglang-0.5.11") == 1 and len(both.scenarios) == 8
    regated = with_site(scenario_set, "sglang", "/opt/c")  # the gate's --sglang: only SGLang scenarios move
    assert regated.get("tp4-ep2.sglang-0.5.10.post1").sglang == "/opt/c" and regated.get("tp4-ep2-lean").sglang == ""
    for bad in (["0.5.11"], ["=/opt/a"], ["a=/x", "a=/y"], ["a b=/x"]):
        with pytest.raises(UsageError):
            parse_sites(bad)
    with pytest.raises(UsageError, match="not an SGLang installation"):
        check_site(str(tmp_path))


def _real_release_comparison(moe_communicators_by_label: dict[str, bool]):
    from support import synthetic_run

    from memprobe.model.comparison import Comparison, ScenarioRun

    sites = [(label, f"/opt/{label}") for label in moe_communicators_by_label]
    scenario_set = headline_scenarios("memprobe", {"tp": 4, "ep": 2}, stacks=["full", "lean"], sglang_sites=sites)
    runs = []
    for scenario in scenario_set.scenarios:
        run = synthetic_run(scenario)
        if scenario.engine == "sglang":
            builds = moe_communicators_by_label[scenario.name.rsplit("-", 1)[1]]
            for info in run.record.ranks:  # what SGLang's ranks record (sglang_engine.coordinator_decisions)
                info.communicators = {name: {"use_pynccl": str(builds), "use_custom_allreduce": str(builds),
                                             "pynccl": "built" if builds else "not built",
                                             "custom_allreduce": "CustomAllreduce" if builds else "not built"}
                                      for name in ("tp", "moe_ep", "moe_tp")}
        runs.append(ScenarioRun(scenario=scenario, run=run))
    return Comparison(comparison_id="synthetic", baseline=scenario_set.baseline, runs=runs)


@pytest.mark.parametrize("old_builds", [True, False])
def test_real_releases_are_paired_by_what_they_built_not_by_label(old_builds):
    from memprobe.reports._model import lean_savings, summarize
    from memprobe.reports.fidelity import pairs

    comparison = _real_release_comparison({"old": old_builds, "new": not old_builds})
    before, after = ("old", "new") if old_builds else ("new", "old")
    real = [s for s in lean_savings(summarize(comparison)) if s.real_sglang]
    assert [(s.full.name, s.lean.name) for s in real] == [(f"tp4-ep2.sglang-{before}", f"tp4-ep2.sglang-{after}")]
    partners = {sglang.scenario.name: reference.scenario.name for reference, sglang in pairs(comparison)}
    assert partners == {f"tp4-ep2.sglang-{before}": "tp4-ep2-full", f"tp4-ep2.sglang-{after}": "tp4-ep2-lean"}


def test_two_releases_that_build_the_same_moe_communicators_save_nothing_to_report():
    from memprobe.reports._model import lean_savings, summarize

    comparison = _real_release_comparison({"a": False, "b": False})
    assert not [s for s in lean_savings(summarize(comparison)) if s.real_sglang]


def _importable_elsewhere() -> bool:
    import importlib.util

    return importlib.util.find_spec("sglang") is not None


def test_every_scenario_once_per_engine():
    base = ScenarioSet((Scenario("tp4", Layout(tp=4)), Scenario("tp4-ep2-lean", Layout(tp=4, ep=2))), baseline="tp4")
    both = with_engines(base, ["memprobe", "sglang"])
    assert [s.name for s in both.scenarios] == ["tp4", "tp4.sglang", "tp4-ep2-lean", "tp4-ep2-lean.sglang"]
    assert [s.engine for s in both.scenarios] == ["memprobe", "sglang", "memprobe", "sglang"]
    assert both.baseline == "tp4"
    only = with_engines(base, ["sglang"])
    assert only.baseline == "tp4.sglang"


def test_engine_enters_the_identity_and_the_sglang_installation_does_not_enter_the_hash():
    reference = Scenario("a", Layout(tp=4, ep=2))
    assert reference.definition()["engine"] == "memprobe"
    sglang = Scenario("a", Layout(tp=4, ep=2), engine="sglang")
    assert sglang.definition()["engine"] == "sglang"
    assert sglang.definition_hash() != reference.definition_hash()
    elsewhere = Scenario("a", Layout(tp=4, ep=2), engine="sglang", sglang="/opt/sglang-0.5.11")
    assert elsewhere.definition()["sglang"] == "/opt/sglang-0.5.11"
    assert elsewhere.definition_hash() == sglang.definition_hash()  # the SGLang under test is what a gate judges


@pytest.mark.skipif(not SGLANG_SITE, reason="set MEMPROBE_TEST_SGLANG_SITE to a folder with SGLang 0.5.23 (tools/sglang_offline)")
@pytest.mark.parametrize("stack", ["full", "lean"])
@pytest.mark.e2e
def test_real_sglang_groups_line_up_with_the_reference_engine_on_cpu(memprobe, tmp_path, stack):
    env = {"PYTHONPATH": os.pathsep.join(p for p in (SGLANG_SITE, str(ROOT), EXTRA_PATH) if p)}
    for engine in ("memprobe", "sglang"):
        result = memprobe("run", "--device", "cpu", "--tp", "4", "--ep", "2", "--stack", stack, "--engine", engine,
                          "--quiet", "--run-id", engine, env=env, timeout=400)
        assert result.returncode == 0, result.stderr
    reference, sglang = load_run(tmp_path / "memprobe-runs" / "memprobe"), load_run(tmp_path / "memprobe-runs" / "sglang")
    assert sglang.record.engine == "sglang" and sglang.record.environment["sglang"]["version"] == "0.5.23"
    assert sglang.record.environment["sglang"]["api"] == "runtime_context"
    for rank in range(4):
        steps = [[(r.group, r.step) for r in sorted(run.readings, key=lambda r: r.sequence) if r.rank == rank]
                 for run in (reference, sglang)]
        assert steps[0] == steps[1]  # same groups, same order, same steps
    # SGLang really built (full) or skipped (lean) pynccl on the MoE groups, as the stack says
    moe_pynccl = {r.status for r in sglang.readings if r.group in ("moe_ep", "moe_tp") and r.step == "pynccl"}
    assert moe_pynccl == ({"ok"} if stack == "full" else {"skipped"})


@pytest.mark.skipif(not {"0.5.10.post1", "0.5.11"} <= set(SGLANG_SITES),
                    reason="set MEMPROBE_TEST_SGLANG_SITES=0.5.10.post1=SITE,0.5.11=SITE (tools/sglang_offline/install.sh)")
@pytest.mark.e2e
def test_real_releases_before_and_after_the_pr_in_one_comparison_on_cpu(memprobe, tmp_path):
    """compare --sglang LABEL=SITE twice: both releases next to the reference stacks, each through its own
    API (both kwargs-style), paired by what their ranks built, not by label."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), EXTRA_PATH) if p)}
    # labels on purpose not the versions: the pairing must come from the runs
    result = memprobe("compare", "--device", "cpu", "--tp", "4", "--ep", "2", "--sglang", f"new={SGLANG_SITES['0.5.11']}",
                      "--sglang", f"old={SGLANG_SITES['0.5.10.post1']}", "--json", "out.json", "--quiet", env=env, timeout=500)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "out.json").read_text())
    runs = {path.name: load_run(path) for path in (tmp_path / "memprobe-runs").glob("*/*") if (path / "run.json").is_file()}
    old, new = runs["tp4-ep2.sglang-old"].record.environment["sglang"], runs["tp4-ep2.sglang-new"].record.environment["sglang"]
    assert (old["version"], old["api"], new["version"], new["api"]) == ("0.5.10.post1", "kwargs", "0.5.11", "kwargs")
    assert old["parallel_state_sha256"] == PUBLISHED_PARALLEL_STATE["0.5.10.post1"]
    # what each release decided for the MoE groups, as its ranks recorded (PR #22515)
    for info in runs["tp4-ep2.sglang-old"].record.ranks:
        assert info.communicators["moe_ep"]["use_pynccl"] == "True" and info.communicators["moe_ep"]["pynccl"] != "not built"
    for info in runs["tp4-ep2.sglang-new"].record.ranks:
        assert info.communicators["moe_ep"]["use_pynccl"] == "False" and info.communicators["moe_ep"]["pynccl"] == "not built"
    assert "lean saves on --tp 4 --ep 2 (real SGLang: tp4-ep2.sglang-old minus tp4-ep2.sglang-new)" in result.stdout
    pairs = {entry["installed"]: entry for entry in document["fidelity"]}
    assert pairs["tp4-ep2.sglang-old"]["reference"] == "tp4-ep2-full"
    assert pairs["tp4-ep2.sglang-new"]["reference"] == "tp4-ep2-lean"
    # 0.5.1x builds no self_pp: shown as a group only the reference engine builds, not as bytes
    assert pairs["tp4-ep2.sglang-new"]["only_in"]["self_pp/groups_created"] == "reference"
    steps = {(s["group"], s["step"]) for s in pairs["tp4-ep2.sglang-old"]["steps"]}
    assert {("moe_ep", "pynccl"), ("moe_tp", "custom_allreduce"), ("tp", "groups_created")} <= steps


def test_where_moe_groups_build_nothing_any_stack_matches_and_the_release_custom_allreduce_layout_comes_first():
    """--tp 2 --ep 2: moe_ep is the tp group and moe_tp has width 1, so the MoE flags decide nothing; each release
    is paired with the reference stack that lays out its own custom all-reduce (v1 in 0.5.1x, v2 in 0.5.23)."""
    from support import synthetic_run

    from memprobe.model.comparison import Comparison, ScenarioRun
    from memprobe.reports.fidelity import pairs

    scenario_set = headline_scenarios("memprobe", {"tp": 2, "ep": 2}, stacks=["full", "full:v1"], sglang_sites=[("old", "/opt/old"), ("new", "/opt/new")])
    runs = []
    for scenario in scenario_set.scenarios:
        run = synthetic_run(scenario)
        if scenario.engine == "sglang":
            old = scenario.name.endswith("old")
            run.record.environment["sglang"] = {"version": "0.5.10.post1" if old else "0.5.23",
                                                "custom_allreduce_default": "v1" if old else "v2"}
            for info in run.record.ranks:
                info.communicators = {name: {"use_pynccl": str(old and name != "tp" or name == "tp")} for name in ("tp", "moe_ep", "moe_tp")}
        runs.append(ScenarioRun(scenario=scenario, run=run))
    partners = {sglang.scenario.name: reference.scenario.name
                for reference, sglang in pairs(Comparison("c", scenario_set.baseline, runs))}
    assert partners == {"tp2-ep2.sglang-old": "tp2-ep2-full-v1", "tp2-ep2.sglang-new": "tp2-ep2-full"}

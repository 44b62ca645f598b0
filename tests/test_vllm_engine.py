"""vLLM through the engine seam: ``--engine vllm-ref`` plans, decides and estimates with vLLM's own flags and
rules; ``--engine vllm`` is refused in one line; bad flags are refused as vLLM (or the seam) refuses them."""

from __future__ import annotations

import json

import pytest

from memprobe import api, engines
from memprobe.engines.api import Facts, Verdict
from memprobe.engines.vllm import ENGINE, VLLMEngineLayout
from memprobe.engines.vllm import communicators as rules
from memprobe.engines.vllm.layout import VLLMLayout, plan
from memprobe.errors import UsageError

MiB = 1 << 20


def _decisions(layout: VLLMEngineLayout, stack: str) -> dict[tuple[str, str], Verdict]:
    chosen = ENGINE.resolve_stack(stack)
    return {(d.group, d.kind): d.verdict for group in ENGINE.plan_for(layout, chosen).groups
            for d in ENGINE.decide(group, chosen, Facts(width=group.width))}


def test_vllm_ref_is_registered_and_plans_vllm_s_groups_in_vllm_s_order():
    ref = engines.get("vllm-ref")
    assert ref.engine is ENGINE and not ref.installed
    layout = ENGINE.layout({"tp": 4, "dp": 2, "moe": True, "enable_expert_parallel": True})
    pure = plan(VLLMLayout(tp=4, dp=2, moe=True, enable_expert_parallel=True))
    planned = ENGINE.plan(layout)
    assert [(g.name, g.rank_lists, g.alias_of) for g in planned.groups] == [
        (g.name, g.rank_lists, g.alias_of) for g in pure.groups]
    assert layout.world_size == 8 and layout.slug() == "tp4-dp2-moe-ep"


def test_engine_decisions_are_the_release_rules_for_each_group():
    layout = VLLMEngineLayout(tp=8, moe=True)
    seam = _decisions(layout, "vllm")
    pure = rules.decide(layout.vllm())
    for entry in pure.groups:
        for decision in entry.decisions:
            assert (seam[(entry.group.name, decision.kind)] is Verdict.BUILT) == decision.built, decision


def test_shared_ep_drops_ep_pynccl_only_where_ep_ranks_are_tp_s():
    assert _decisions(VLLMEngineLayout(tp=8, moe=True), "shared-ep")[("ep", "pynccl")] is Verdict.NOT_ELIGIBLE
    assert _decisions(VLLMEngineLayout(tp=4, pp=2, moe=True), "shared-ep")[("ep", "pynccl")] is Verdict.NOT_ELIGIBLE
    assert _decisions(VLLMEngineLayout(tp=4, dp=2, moe=True), "shared-ep")[("ep", "pynccl")] is Verdict.BUILT
    assert _decisions(VLLMEngineLayout(tp=8, moe=True), "vllm")[("ep", "pynccl")] is Verdict.BUILT
    assert _decisions(VLLMEngineLayout(tp=8, moe=True), "vllm:0.10")[("ep", "pynccl")] is Verdict.NOT_ELIGIBLE


def test_estimate_shows_shared_ep_s_saving_at_tp8_moe_and_none_at_dp2():
    def worst_after_init(comparison, name):  # the largest estimated total of any rank (its last reading)
        run = next(r for r in comparison.runs if r.scenario.name == name)
        return max(reading.primary_bytes for reading in run.run.readings)

    tp8 = api.estimate(tp=8, moe=True, engine="vllm-ref")
    assert [r.scenario.name for r in tp8.runs] == ["tp8-moe-vllm", "tp8-moe-shared-ep"]
    assert all(r.scenario.env_preset == "vllm" for r in tp8.runs)  # not SGLang's NCCL_CUMEM_ENABLE=0
    saving = worst_after_init(tp8, "tp8-moe-vllm") - worst_after_init(tp8, "tp8-moe-shared-ep")
    assert saving > 100 * MiB  # one PyNccl communicator of eight ranks, cuMem on
    dp2 = api.estimate(tp=4, dp=2, moe=True, engine="vllm-ref")
    assert worst_after_init(dp2, "tp4-dp2-moe-vllm") == worst_after_init(dp2, "tp4-dp2-moe-shared-ep")


def test_a_dense_layout_s_missing_moe_groups_come_with_vllm_s_rule():
    from memprobe.reports.compare_table import lean_lines

    rule = "vLLM 0.33.0 builds the EP group only for MoE models (parallel_state.py:2326-2327): add --moe"
    for widths, line in (({"enable_expert_parallel": True}, "no MoE groups in this layout: --enable-expert-parallel "
                                                            f"builds nothing on a dense model; {rule}"),
                         ({}, f"no MoE groups in this layout: {rule}")):
        blocks = lean_lines(api.estimate(tp=8, engine="vllm-ref", **widths))
        assert [block[-1].strip() for block in blocks] == [line]
    assert all("no MoE groups" not in text for block in lean_lines(api.estimate(tp=8, moe=True, engine="vllm-ref"))
               for text in block)
    sglang = engines.get("memprobe").engine
    assert sglang.no_highlighted_groups_hint(sglang.layout({"tp": 2, "ep": 1})) == ""  # a plug-in's own, or none


def test_host_memory_of_the_mq_broadcaster_is_never_gpu_bytes():
    layout = VLLMEngineLayout(tp=2)
    tp = ENGINE.plan(layout).group("tp")
    mq = next(d for d in ENGINE.decide(tp, ENGINE.resolve_stack("vllm"), Facts(width=2)) if d.kind == "mq_broadcaster")
    assert mq.built and {a.pool for a in ENGINE.sizes(mq, Facts(width=2))} == {"host"}


@pytest.mark.parametrize("widths, message", [
    ({"tp": 8, "ep": 2}, "--ep is not a flag of engine vllm"),
    ({"tp": 4, "dcp": 3, "moe": True}, "divisible by --dcp 3"),
    ({"tp": 2, "moe": True, "enable_eplb": True}, "--enable-eplb needs --enable-expert-parallel"),
    ({"tp": 2, "all2all_backend": "nope"}, "--all2all-backend 'nope'"),
])
def test_bad_layouts_are_refused_in_one_line(widths, message):
    with pytest.raises(UsageError, match=message):
        ENGINE.layout(widths)


def test_each_stack_plans_the_groups_of_its_release():
    """vLLM 0.11 and 0.10 build the EP group for dense models too and have no ETP/PCP/EPLB; 0.33 builds EP only for
    MoE models: the stack's release decides the groups, and then the decisions on them."""
    dense = VLLMEngineLayout(tp=2)
    names = {stack: [g.name for g in ENGINE.plan_for(dense, ENGINE.resolve_stack(stack)).groups]
             for stack in ("vllm", "vllm:0.11", "vllm:0.10", "shared-ep")}
    assert names["vllm"] == names["shared-ep"] == ["world", "tp", "etp", "dcp", "pcp", "pp", "dp"]
    assert names["vllm:0.11"] == names["vllm:0.10"] == ["world", "tp", "dcp", "pp", "dp", "ep"]
    assert ENGINE.plan(dense).groups == ENGINE.plan_for(dense, ENGINE.resolve_stack("vllm")).groups
    assert _decisions(dense, "vllm:0.11")[("ep", "pynccl")] is Verdict.BUILT  # vllm PR #24982: EP gets PyNccl
    assert _decisions(dense, "vllm:0.10")[("ep", "pynccl")] is Verdict.NOT_ELIGIBLE  # 'ep does not use pynccl'
    assert ("ep", "pynccl") not in _decisions(dense, "vllm")


def test_dense_dp_is_one_world_before_0_33_and_refused_on_0_33():
    dense_dp = VLLMEngineLayout(tp=2, dp=2)
    old = ENGINE.plan_for(dense_dp, ENGINE.resolve_stack("vllm:0.11"))
    assert old.group("world").rank_lists == ((0, 1, 2, 3),) and old.group("ep").rank_lists == ((0, 1, 2, 3),)
    assert _decisions(dense_dp, "vllm:0.11")[("ep", "all2all_manager")] is Verdict.BUILT  # DP > 1 on "ep:0"
    for call in (lambda: ENGINE.plan(dense_dp), lambda: ENGINE.plan_for(dense_dp, ENGINE.resolve_stack("shared-ep"))):
        with pytest.raises(UsageError, match=r"vLLM 0\.33\.0 runs a dense model's DP ranks as independent engines"):
            call()


@pytest.mark.parametrize("widths, stack, message", [
    ({"tp": 2, "pcp": 2}, "vllm:0.11", r"--pcp 2: vLLM 0\.11\.0 has no prefill context parallelism.*stack vllm:0\.11"),
    ({"tp": 2, "pcp": 2, "moe": True}, "vllm:0.10", r"--pcp 2: vLLM 0\.10\.2 has no prefill"),
    ({"tp": 2, "all2all_backend": "deepep_v2"}, "vllm:0.11", r"--all2all-backend deepep_v2: vLLM 0\.11\.0 has no"),
    ({"tp": 2, "all2all_backend": "flashinfer_all2allv"}, "vllm:0.10", r"vLLM 0\.10\.2 has no such backend"),
])
def test_flags_a_release_lacks_are_refused_naming_the_release(widths, stack, message):
    layout = ENGINE.layout(widths)  # every release line's common checks pass
    assert ENGINE.stack_problem(layout, ENGINE.resolve_stack("vllm")) is None
    with pytest.raises(UsageError, match=message):
        ENGINE.plan_for(layout, ENGINE.resolve_stack(stack))


def test_a_scenario_names_itself_and_the_release_that_lacks_its_flag():
    from memprobe.model.scenario import Scenario

    with pytest.raises(UsageError, match=r"^scenario old-pcp: --pcp 2: vLLM 0\.11\.0 has no prefill"):
        Scenario("old-pcp", VLLMEngineLayout(tp=2, pcp=2), stack="vllm:0.11", env_preset="vllm", engine="vllm-ref")
    Scenario("new-pcp", VLLMEngineLayout(tp=2, pcp=2), stack="vllm", env_preset="vllm", engine="vllm-ref")


def test_old_releases_run_their_own_all2all_default():
    layout = VLLMEngineLayout(tp=2, dp=2, moe=True)
    reasons = {line: rules.decide(layout.vllm(), line).for_group("ep").decision("all2all_manager").reason
               for line in ("0.11-0.2x", "0.10")}
    assert reasons["0.11-0.2x"].startswith("allgather_reducescatter manager")
    assert reasons["0.10"].startswith("naive manager")  # VLLM_ALL2ALL_BACKEND's default in 0.10.2


def test_a_release_s_refusal_is_one_line_and_exit_2_before_anything_runs(memprobe, tmp_path):
    result = memprobe("compare", "--engine", "vllm-ref", "--tp", "2", "--pcp", "2", "--stacks", "vllm,vllm:0.11",
                      "--device", "cpu", "--out-dir", "out")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "vLLM 0.11.0 has no prefill context parallelism" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_vllm_flags_are_refused_for_sglang():
    with pytest.raises(UsageError, match="--moe is not a flag of engine sglang"):
        engines.get("sglang-ref").engine.layout({"tp": 2, "moe": True})


def test_installed_vllm_is_refused_in_one_line_naming_vllm_ref(memprobe):
    result = memprobe("estimate", "--engine", "vllm", "--tp", "8", "--moe")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--engine vllm-ref" in lines[0], result.stderr


@pytest.mark.e2e
def test_cpu_compare_builds_vllm_s_groups_and_its_baseline_gates_the_saved_run(memprobe, tmp_path):
    """One real torchrun launch per stack (2 ranks, gloo): every rank list vLLM creates, width 1 included, and a
    vLLM baseline made from the saved runs passes its own gate (nothing judged against SGLang's)."""
    compared = memprobe("compare", "--engine", "vllm-ref", "--tp", "2", "--moe", "--device", "cpu", "--out-dir", "out")
    assert compared.returncode == 0, compared.stderr
    assert "shared-ep saves on --tp 2 --moe" in compared.stdout
    (folder,) = (tmp_path / "out").iterdir()
    expected = [(g.name, [list(r) for r in g.rank_lists], g.alias_of)
                for g in ENGINE.plan(VLLMEngineLayout(tp=2, moe=True)).groups]
    for stack in ("vllm", "shared-ep"):
        record = json.loads((folder / f"tp2-moe-{stack}" / "run.json").read_text())
        assert record["engine"] == "vllm-ref" and record["env_preset"] == "vllm" and record["layout"]["moe"] is True
        assert [(g["name"], g["ranks"], g["alias_of"]) for g in record["plan"]] == expected
        words = {info["rank"]: info["communicators"] for info in record["ranks"]}
        assert set(words) == {0, 1}
        assert words[0]["ep"]["pynccl"] == "skipped: --device cpu has no GPU communicators"
        assert words[1]["dcp"]["pynccl"].startswith("skipped: width 1")
    made = memprobe("baseline", "update", "--from", str(folder), "--out", "base.json")
    assert made.returncode == 0, made.stderr
    gated = memprobe("gate", "--baseline", "base.json", "--results", str(folder))
    assert gated.returncode == 0, gated.stdout + gated.stderr
    assert "memprobe's reproduction of vLLM 0.33.0" in gated.stdout + gated.stderr


def test_on_cpu_a_kind_vllms_own_gates_close_says_why_and_one_they_leave_open_is_skipped() -> None:
    """--device cpu builds no GPU communicator, but what CudaCommunicator's name/flag/env gates close (EP's all2all
    without DP) is closed on any device: the record says vLLM's reason, not "no GPU"."""
    layout = VLLMEngineLayout(tp=2, moe=True, enable_expert_parallel=True)
    stack = ENGINE.stacks()["vllm"]
    by_group = {group.name: group for group in ENGINE.plan_for(layout, stack).groups}
    cpu = Facts(width=2, device="cpu")
    ep = {d.kind: d for d in ENGINE.decide(by_group["ep"], stack, cpu)}
    tp = {d.kind: d for d in ENGINE.decide(by_group["tp"], stack, cpu)}
    assert ep[rules.ALL2ALL_MANAGER].verdict is Verdict.NOT_ELIGIBLE
    assert "use_all2all" in ep[rules.ALL2ALL_MANAGER].reason
    assert ep[rules.PYNCCL].verdict is Verdict.NO_DEVICE
    assert tp[rules.CUSTOM_ALLREDUCE].verdict is Verdict.NO_DEVICE


def test_an_estimate_on_an_nccl_without_ncclcommsuspend_says_why_vllm_0_33_builds_no_pynccl(tmp_path) -> None:
    """The estimate records where its NCCL came from and what that release changes in vLLM's own decisions; the
    gate's verdict repeats it, so a pass that cannot see a PyNccl is never a silent one."""
    old = api.estimate(engine="vllm-ref", tp=2, moe=True, stacks="vllm", nccl="2.28.9")
    basis = old.runs[0].run.record.environment["estimate"]
    assert basis["rules_nccl_why"] == "--nccl"
    assert [note for note in basis["engine_notes"] if "ncclCommSuspend" in note and "2.28.9" in note]
    pinned = api.estimate(engine="vllm-ref", tp=2, moe=True, stacks="vllm", nccl="2.30.7")
    assert pinned.runs[0].run.record.environment["estimate"]["engine_notes"] == []
    assert api.estimate(engine="vllm-ref", tp=2, moe=True, stacks="vllm:0.11", nccl="2.28.9").runs[0].run.record \
        .environment["estimate"]["engine_notes"] == []
    (tmp_path / "s.toml").write_text('baseline = "tp2-moe"\n[[scenario]]\nname = "tp2-moe"\ntp = 2\nmoe = true\n'
                                     'engine = "vllm-ref"\nstack = "vllm"\n')
    api.make_baseline(scenarios_file=tmp_path / "s.toml", estimate=True, nccl="2.28.9", out=tmp_path / "b.json")
    verdict = api.judge(baseline=tmp_path / "b.json", estimate=True)
    assert any("ncclCommSuspend" in note for note in verdict.notes), verdict.notes


def test_the_estimate_says_which_nccl_and_why_and_explains_every_word_of_its_moe_table(memprobe) -> None:
    result = memprobe("estimate", "--engine", "vllm-ref", "--tp", "2", "--moe", "--nccl", "2.28.9")
    assert result.returncode == 0, result.stderr
    assert "from NCCL 2.28.9 (memprobe/estimate/nccl.py) [that release: --nccl]" in result.stdout
    assert "vLLM 0.33.0 builds no PyNccl on NCCL 2.28.9" in result.stderr
    title = next(line for line in result.stdout.splitlines() if line.startswith("MoE groups per communicator"))
    assert "skipped: not built in this run (a rule of the engine's" in title and "n/a: the scenario has no such group" in title

"""memprobe estimate: NCCL's rules against NCCL's own logs, the backtest over every committed measured run,
and the command (labels, exports, refusals). No GPU: the estimate never touches one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from memprobe.analysis import nccl_log
from memprobe.analysis.nccl_log import parse_file
from memprobe.errors import UsageError
from memprobe.estimate import nccl
from memprobe.estimate.calibration import find_calibration, load_calibration, packaged_calibrations
from memprobe.estimate.check import bound, check_run, measured_runs
from memprobe.analysis.attribution import rank_readings
from memprobe.estimate.model import Member, Topology, estimate_context, estimate_rank, estimate_run
from memprobe.estimate.torch_cache import CachingAllocator
from memprobe.engines.sglang.layout import SGLangLayout as Layout
from memprobe.model.run_files import load_run
from memprobe.model.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
MiB = 1 << 20
H200 = nccl.GpuLinks(compute_capability=90, nvlinks=18)
EAGER = nccl.NcclSettings(cumem=False)
CALIBRATION_RUN = RESULTS / "h200x1-20261201" / "calibration" / "calibration.json"


@pytest.fixture(scope="module")
def backtest():
    calibrations = {c.gpu_model: c for c in map(load_calibration, packaged_calibrations())}
    return [check_run(where, run, calibrations.get) for where, run in measured_runs([RESULTS])]


def _clear_rule_caches() -> None:
    nccl.channels.cache_clear()
    nccl.communicator.cache_clear()


# ------------------------------------------------------------------- NCCL's rules against NCCL's own logs

def _logged_communicators():
    """(run env, communicator) for every communicator in every committed NCCL log."""
    for log in sorted(path for pattern in nccl_log.LOG_PATTERNS for path in RESULTS.rglob(f"nccl/{pattern}")):
        run = load_run(log.parent.parent)
        env = dict(run.record.environment.get("nccl_env") or {})
        for communicator in parse_file(log).communicators:
            if communicator.channel_counts:
                yield log, env, communicator


def test_channel_counts_are_the_ones_nccl_logged():
    seen = 0
    for log, env, communicator in _logged_communicators():
        settings = nccl.NcclSettings.from_env(env)
        predicted = nccl.channels(communicator.nranks, 1, H200, 4, settings)
        logged = communicator.channel_counts
        assert (predicted.collective, predicted.p2p) == (logged["coll"], logged["p2p"]), (log, communicator.key, logged)
        seen += 1
    assert seen >= 50  # 2- and 4-rank communicators, default and NCCL_MAX_CTAS=4


def test_peers_each_rank_connects_are_the_logged_rings_and_trees():
    """Eager (cuMem off): per channel, ring prev/next and the tree chain; the logs' "Channel 00/24 : 0 1 2 3"
    and "Trees [0] 1/-1/-1->0->-1" lines say which."""
    checked = 0
    for log, env, communicator in _logged_communicators():
        settings = nccl.NcclSettings.from_env(env)
        if not settings.eager or not communicator.trees or not communicator.rings:
            continue  # NCCL prints the ring order ("Channel 00/24 : 0 1 2 3") in some ranks' logs only
        plan = communicator.connection_plan()
        peers = nccl.ring_and_tree_peers(communicator.rank, communicator.nranks, communicator.nranks, eager=True)
        channels = communicator.channel_counts["coll"]
        assert plan["recv"] == {peer: channels for peer in sorted(peers.recv_local)}, (log, communicator.key)
        assert plan["send"] == {peer: channels for peer in sorted(peers.send_local)}, (log, communicator.key)
        checked += 1
    assert checked >= 10


def test_buffer_and_pool_sizes_follow_nccl_source():
    # p2p.cc:377-380 / 445-448 on Hopper (write mode): 2 MiB send, 10 MiB receive; read mode (A100): 6 + 6
    assert nccl.p2p_buffer_sizes(EAGER, read=False) == (2 * MiB, 10 * MiB)
    assert nccl.p2p_buffer_sizes(EAGER, read=True) == (6 * MiB, 6 * MiB)
    two = nccl.communicator(0, 2, 2, H200, 2, EAGER)
    assert {part.kind: part.bytes for part in two.init_parts} == {
        "P2P receive buffers": 24 * 10 * MiB, "P2P send buffers": 24 * 2 * MiB, "shared NET pool": 32 * 16 * 512 * 1024}
    small = nccl.NcclSettings.from_env({"NCCL_CUMEM_ENABLE": "0", "NCCL_BUFFSIZE": "1048576"})
    assert nccl.p2p_chunk(small, 1) == 128 * 1024  # init.cc:721: at most Simple / 8


def test_one_rank_communicator_rule_against_the_calibration():
    """A one-rank communicator: no peer (generic.cc:18); eager: the NET pool of 64 p2p channels; lazy: the
    channel structures. The calibration measured both on one H200."""
    calibration = load_calibration(CALIBRATION_RUN)
    for point in calibration.points:
        settings = nccl.NcclSettings.from_env({"NCCL_CUMEM_ENABLE": str(int(point.cumem))})
        predicted = nccl.communicator(0, 1, 1, H200, 1, settings).bytes
        assert abs(predicted - point.one_rank_communicator_bytes) <= 2 * MiB, (point, predicted)


def test_lazy_connection_moves_the_ring_to_the_first_all_reduce():
    lazy = nccl.communicator(1, 4, 4, H200, 4, nccl.NcclSettings(cumem=True))
    assert lazy.init_bytes == (3 * 32 + 2) * 2 * MiB  # channel structures only, no NET pool
    assert lazy.first_use_bytes == 24 * (10 + 2) * MiB  # the ring, one peer each way


def test_unmodelled_nccl_settings_are_refused():
    with pytest.raises(UsageError, match="NCCL_ALGO"):
        nccl.NcclSettings.from_env({"NCCL_ALGO": "ring"})
    with pytest.raises(UsageError, match="NVLS"):
        nccl.NcclSettings.from_env({"NCCL_NVLS_ENABLE": "1"})


# ------------------------------------------------------------------- torch's caching allocator

def test_caching_allocator_segments():
    cache = CachingAllocator()
    cache.free(cache.allocate(4))
    assert cache.reserved == 2 * MiB  # small pool
    cache.allocate(4, stream="side")
    assert cache.reserved == 4 * MiB  # another stream never reuses the default stream's segment
    cache.allocate(4 * MiB)
    assert cache.reserved == 24 * MiB  # 1-10 MiB: a 20 MiB segment
    cache.allocate(2 * MiB)
    assert cache.reserved == 24 * MiB  # fits in that segment
    cache.allocate(15 * MiB + 1)
    assert cache.reserved == 40 * MiB  # >= 10 MiB and more than the 14 MiB left: its own segment, rounded to 2 MiB
    cache.empty_cache()
    assert cache.reserved == 38 * MiB  # only the freed default-stream segment goes back


# ------------------------------------------------------------------- the backtest

def test_every_committed_run_is_estimated_within_the_bound(backtest):
    checked = [result for result in backtest if not result.skipped]
    outside = [(result.path, total) for result in checked for total in result.totals if not total.within]
    assert not outside, outside[:3]
    assert {result.gpus for result in checked} >= {1, 2, 4}
    assert len(checked) >= 100


def test_backtest_covers_nccl_settings_and_real_sglang_releases(backtest):
    checked = [result for result in backtest if not result.skipped]
    runs = {result.path: load_run(result.path) for result in checked}
    envs = [run.record.environment.get("nccl_env", {}) for run in runs.values()]
    assert any(env.get("NCCL_CUMEM_ENABLE") == "1" for env in envs)
    assert any(env.get("NCCL_BUFFSIZE") == "1048576" for env in envs)
    assert any(env.get("NCCL_MAX_CTAS") == "4" for env in envs)
    sglangs = [run.record.environment.get("sglang") for run in runs.values() if run.record.engine == "sglang"]
    versions = {item.get("version") if isinstance(item, dict) else item for item in sglangs}
    assert {"0.5.10.post1", "0.5.11", "0.5.23"} <= versions


def test_runs_left_out_are_left_out_for_a_stated_reason(backtest):
    allowed = ("no calibration for NVIDIA H100", "status incomplete", "ranks split over CUDA_VISIBLE_DEVICES",
               "another node gathered the run", "which the rules do not model",
               "a communicator failed to build",  # torch symmetric memory of two ranks on one GPU
               "the calibration and rules are NCCL 2.28.9's")  # runs on a preloaded NCCL 2.30.7
    for result in backtest:
        if result.skipped:
            assert any(reason in result.skipped for reason in allowed), (result.path, result.skipped)


def test_the_backtest_fails_when_a_rule_is_broken(backtest, monkeypatch):
    """Without channel duplication (search.cc:961-974) every communicator halves: the backtest must see it."""
    monkeypatch.setattr(nccl, "_duplicate", lambda channels, speed, capability: channels)
    _clear_rule_caches()
    try:
        calibrations = {c.gpu_model: c for c in map(load_calibration, packaged_calibrations())}
        where = RESULTS / "h200x4-20261127" / "compare-tp4-ep2" / "tp4-ep2-full"
        result = check_run(str(where), load_run(where), calibrations.get)
        assert not result.skipped and not result.within
    finally:
        monkeypatch.undo()
        _clear_rule_caches()


def test_bound_is_two_percent_or_16_mib():
    assert bound(100 * MiB) == 16 * MiB
    assert bound(5000 * MiB) == 100 * MiB


# ------------------------------------------------------------------- the model and the command

def test_packaged_calibration_is_the_committed_one():
    packaged = [path for path in packaged_calibrations() if path.name == "nvidia-h200.json"]
    assert packaged and packaged[0].read_bytes() == CALIBRATION_RUN.read_bytes()


def test_estimated_records_say_so():
    scenario = Scenario(name="tp8-ep4-full", layout=Layout(tp=8, ep=4), stack="full")
    run = estimate_run(scenario, Topology.for_world(8, None, None), find_calibration(None, None))
    assert run.record.source == "estimated" and run.record.environment["sampling_mode"] == "estimate"
    assert sorted(run.ranks) == list(range(8))
    notes = {reading.note for reading in run.readings if reading.step == "pynccl" and reading.status == "ok"}
    assert any("once per process" in note for note in notes)


def test_two_nodes_put_nccl_net_buffers_on_the_crossing_ranks():
    scenario = Scenario(name="tp16", layout=Layout(tp=16, ep=8), stack="lean")
    run = estimate_run(scenario, Topology.for_world(16, 8, None), find_calibration(None, None))
    tp_notes = [reading.note for reading in run.readings if reading.group == "tp" and reading.step == "pynccl"]
    assert any("NET receive buffers" in note for note in tp_notes)
    assert all("custom" not in r.note or r.status == "skipped" for r in run.readings if r.group == "tp" and r.step == "custom_allreduce")


def test_estimate_command_labels_every_output(memprobe, tmp_path):
    out = tmp_path / "estimate.json"
    result = memprobe("estimate", "--tp", "8", "--ep", "4", "--json", str(out), "--markdown", str(tmp_path / "e.md"))
    assert result.returncode == 0, result.stderr
    assert "ESTIMATED GPU memory" in result.stdout and "not measured" in result.stdout
    document = json.loads(out.read_text())
    assert document["estimate"]["estimated"] is True and document["estimate"]["measured"] is False
    assert {item["run"]["source"] for item in document["scenarios"]} == {"estimated"}
    assert "ESTIMATED" in (tmp_path / "e.md").read_text()
    jsonschema = pytest.importorskip("jsonschema", reason="the dev extra installs jsonschema")
    schema = json.loads((ROOT / "docs" / "schema" / "comparison.schema.json").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(document)  # compare's schema: existing readers work


@pytest.mark.parametrize("args, message", [
    (("--tp", "8", "--gpu", "NVIDIA B200"), "memprobe calibrate"),
    (("--tp", "8", "--env", "NCCL_ALGO=ring"), "does not model NCCL_ALGO"),
    (("--tp", "8", "--gpus-per-node", "0"), "--gpus-per-node"),
    (("--ep", "2"), "needs --tp"),
    (("--tp", "8", "--calibration", "no-such.json"), "no such file"),
    (("--tp", "16", "--ep", "8", "--gpus-per-node", "6"), "does not fill nodes of 6 GPUs"),
    (("--tp", "8", "--gpus-per-node", "16"), "at most 8 GPUs"),
    (("--tp", "8", "--nnodes", "3"), "does not fill nodes"),
    (("--check", "results", "--json", "out.json"), "--json would be ignored"),
])
def test_estimate_bad_input_is_one_line_and_exit_2(memprobe, tmp_path, args, message):
    result = memprobe("estimate", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_check_command_exits_0_on_committed_runs(memprobe):
    result = memprobe("estimate", "--check", str(RESULTS / "h200x2-sglang-20261128"), "--per-rank")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "largest total error on 2 GPU(s)" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("--out", "cal.json"), "needs one NVIDIA GPU"),
    (("--out", "cal.txt"), "must end in .json"),
])
def test_calibrate_without_a_gpu_or_with_a_bad_path_is_one_line_and_exit_2(memprobe, tmp_path, args, message):
    result = memprobe("calibrate", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- ranks found alike read alike

def _alone(topology: Topology, group, rank: int) -> Member:
    """A rank's place in ``group`` counted from scratch: its list, its index there, the most of the list on one node."""
    ranks = group.ranks_of(rank)
    nodes = Counter(member // topology.gpus_per_node for member in ranks)
    return Member(ranks, ranks.index(rank), max(nodes.values()))


def _key(reading) -> tuple:
    return (reading.step, reading.group, reading.status, reading.primary_bytes, reading.torch_reserved_bytes, reading.note)


@pytest.mark.parametrize("layout, gpus_per_node, env", [
    (Layout(tp=8, ep=4), None, {}),
    (Layout(tp=8, pp=4, ep=2), 8, {}),
    (Layout(tp=8, pp=4, ep=2), 4, {"NCCL_CUMEM_ENABLE": "1"}),
    (Layout(tp=6, pp=3, ep=3), 6, {}),  # lists whose first rank sits at different places on a node
    (Layout(tp=4, pp=6), 3, {}),  # tp lists straddling nodes of 3
    (Layout(tp=16, ep=8), 8, {}),
])
def test_every_rank_reads_what_its_class_reads(layout, gpus_per_node, env):
    """The estimate works out one rank per class of alike ranks; each rank estimated on its own reads the same."""
    scenario = Scenario(name="s", layout=layout, stack="full", env=env)
    topology = Topology.for_world(layout.world_size, gpus_per_node, None)
    calibration = find_calibration(None, None)
    run = estimate_run(scenario, topology, calibration)
    context = estimate_context(scenario, topology, calibration)
    by_rank = rank_readings(run)
    groups = [group for group in context.plan.groups if not group.is_alias]
    for rank in range(layout.world_size):
        alone = estimate_rank(context, rank, {g.name: {rank: _alone(topology, g, rank)} for g in groups})
        assert [_key(r) for r in by_rank[rank]] == [_key(r) for r in alone.readings], \
            f"rank {rank} of {layout.flags()} on nodes of {topology.gpus_per_node}"
    if layout.tp * layout.pp <= 8 or gpus_per_node == 8:  # ranks of lists that do not straddle nodes unevenly
        assert len(set(map(id, by_rank.values()))) < layout.world_size, "no two ranks found alike"


def test_estimate_of_4096_ranks_never_imports_torch(tmp_path):
    """The estimate's path is pure Python: no torch (seconds to import, and a GPU it must not touch)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "memprobe", "estimate", "--tp", "8", "--pp", "512",
                           "--ep", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "import time:" in line}
    assert "memprobe" in imported and "torch" not in imported
    assert "4096 of 4096" in done.stdout or "of 4096" in done.stdout


def test_peer_counts_of_a_whole_list_are_each_ranks_own():
    """list_peer_counts works out each kind of node once; every index must still read what it reads alone."""
    shapes = [(n, p) for n in range(1, 41) for p in range(1, 9)] + [(4096, 8), (512, 1), (1000, 8), (96, 6)]
    for n, p in shapes:
        for eager in (True, False):
            assert nccl.list_peer_counts(n, p, eager) == [nccl.peer_counts(i, n, p, eager) for i in range(n)], (n, p, eager)

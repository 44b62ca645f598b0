"""The estimate on the user's stack and network: the NCCL releases its rules were read for (2.27.3 to 2.30.7),
``--nccl`` and its default, ``--network``/``--nic-gbps``, and the runs of several NCCL_HOSTID "nodes" on one GPU
(results/h200x1-socket-nodes-20261203) that measure the socket network. No GPU, nothing launched."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from memprobe import api
from memprobe.errors import UsageError
from memprobe.estimate import nccl, nccl_versions
from memprobe.estimate.calibration import find_calibration, load_calibration, packaged_calibrations
from memprobe.estimate.check import check_run, measured_runs
from memprobe.measure.rendezvous import nccl_host
from memprobe.reports import write_csv, write_summary_csv

sys.path.insert(0, str(Path(__file__).parent))

from support import synthetic_comparison  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOCKET_RUNS = ROOT / "results" / "h200x1-socket-nodes-20261203"
H200 = nccl.GpuLinks(compute_capability=90, nvlinks=18)
MiB = 1 << 20

#: The rules whose statement changed between the releases read (nccl_versions' docstring says why each is, or is
#: not, a change in bytes); every other rule reads the same in every release.
CHANGED = {"P2P chunk for several nodes", "P2P chunk for several nodes, scaled", "P2P NET chunk doubled on Arm with sm100",
           "channel structure: shared peers", "channel structure: peers", "channel structure: ring ranks"}


def _statements(rule: str) -> dict[str, str | None]:
    return {version: (entry or {}).get("statement") for version, entry in nccl_versions.rule_sites()[rule]["at"].items()}


def test_every_rule_site_is_read_in_every_release_and_only_the_listed_ones_changed():
    versions = nccl_versions.read_versions()
    assert versions[0] == "2.27.3" and versions[-1] == "2.30.7" and {"2.27.5", "2.28.3", "2.28.9"} <= set(versions)
    for rule, site in nccl_versions.rule_sites().items():
        assert set(site["at"]) == set(versions), rule
        statements = _statements(rule)
        if rule in CHANGED:
            assert len(set(statements.values())) > 1, rule
            continue
        assert None not in statements.values(), (rule, statements)  # a line in every release, cited by file:line
        assert len(set(statements.values())) == 1, (rule, statements)
        assert all(entry["line"] > 0 for entry in site["at"].values())


def test_the_arm_chunk_rule_starts_in_2_29_2_as_the_source_says():
    ratio = _statements("P2P NET chunk doubled on Arm with sm100")
    first = min((v for v, statement in ratio.items() if statement), key=nccl_versions.version_key)
    assert first == ".".join(map(str, nccl_versions.ARM_NET_CHUNK_FROM))
    assert nccl_versions.net_chunk_ratio("2.28.9", True, 100) == 1
    assert nccl_versions.net_chunk_ratio("2.29.2", True, 100) == 2
    assert nccl_versions.net_chunk_ratio("2.30.7", False, 100) == nccl_versions.net_chunk_ratio("2.30.7", True, 90) == 1


def _readings(comparison) -> list[tuple]:
    return [(item.scenario.name, r.rank, r.group, r.step, r.primary_bytes) for item in comparison.runs
            for r in item.run.all_readings()]


@pytest.mark.parametrize("layout", [dict(tp=8, ep=4), dict(tp=16, ep=8, gpus_per_node=8)])
def test_nccl_2_27_5_and_2_28_9_give_the_same_bytes_where_the_source_did_not_change(layout):
    old = api.estimate(nccl="2.27.5", progress=False, stacks="full,lean", **layout)
    new = api.estimate(nccl="2.28.9", progress=False, stacks="full,lean", **layout)
    assert _readings(old) == _readings(new)
    assert old.runs[0].run.record.environment["estimate"]["rules_nccl"] == "2.27.5"
    assert new.runs[0].run.record.environment["nccl"] == "2.28.9"


def test_a_release_whose_rule_changed_gives_other_bytes_where_it_applies():
    """Two Arm nodes of sm100 GPUs, eager: the shared NET pool doubles from 2.29.2 (init.cc:751-752); on x86 it does not."""
    def pool(version: str, arm: bool) -> int:
        links = nccl.GpuLinks(compute_capability=100, nvlinks=18, arm_host=arm)
        settings = nccl.NcclSettings(cumem=False, version=version)
        estimate = nccl.communicator(0, 16, 8, links, 8, settings)
        return next(part.bytes for part in estimate.init_parts if part.kind == "shared NET pool")

    assert pool("2.29.2", arm=True) == 2 * pool("2.28.9", arm=True)
    assert pool("2.29.2", arm=False) == pool("2.28.9", arm=False)


def test_unknown_release_is_refused_and_a_detected_one_falls_back_with_a_warning(monkeypatch):
    with pytest.raises(UsageError, match="2.32.0 is not one of them"):
        nccl_versions.resolve("2.32.0", "2.28.9")
    monkeypatch.setattr(nccl_versions, "installed_nccl", lambda: ("2.32.1", "nvidia-nccl-cu13 2.32.1 (installed)"))
    version, why, warnings = nccl_versions.resolve(None, "2.28.9")
    assert (version, why) == ("2.28.9", "the calibration's") and "2.32.1" in warnings[0]
    monkeypatch.setattr(nccl_versions, "installed_nccl", lambda: ("2.30.7", "nvidia-nccl-cu13 2.30.7 (installed)"))
    version, why, warnings = nccl_versions.resolve(None, "2.28.9")
    assert version == "2.30.7" and "calibration was measured with NCCL 2.28.9" in warnings[0]
    monkeypatch.setattr(nccl_versions, "installed_nccl", lambda: None)
    assert nccl_versions.resolve(None, "2.28.9") == ("2.28.9", "the calibration's", [])


def test_the_installed_nccl_is_read_from_package_metadata_without_torch(tmp_path):
    """A fake nvidia-nccl-cu13 distribution on the path: its version is the default, and torch is never imported."""
    info = tmp_path / "nvidia_nccl_cu13-2.30.7.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nvidia-nccl-cu13\nVersion: 2.30.7\n")
    code = ("import sys; from memprobe.estimate.nccl_versions import installed_nccl; "
            "print(installed_nccl()[0], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["2.30.7", "False"]


def test_estimate_command_names_its_nccl_and_warns_when_it_is_not_the_calibrations(memprobe, tmp_path):
    result = memprobe("estimate", "--tp", "4", "--nccl", "2.30.7", "--quiet", "--markdown", "m.md", "--json", "e.json",
                      "--csv", "long.csv", "--summary-csv", "summary.csv")
    assert result.returncode == 0, result.stderr
    assert "NCCL 2.30.7 rules + calibration of NCCL 2.28.9" in result.stdout
    assert "warning: the rules model NCCL 2.30.7 but the calibration was measured with NCCL 2.28.9" in result.stderr
    assert "NCCL 2.30.7 rules" in (tmp_path / "m.md").read_text()
    assert json.loads((tmp_path / "e.json").read_text())["estimate"]["rules_nccl"] == "2.30.7"
    for name in ("long.csv", "summary.csv"):  # a column of every row, as pandas reads it
        frame = pd.read_csv(tmp_path / name, dtype={"rules_nccl": str})
        assert list(frame["rules_nccl"].unique()) == ["2.30.7"] and set(frame["sampling_mode"]) == {"estimate"}
    same = memprobe("estimate", "--tp", "4", "--nccl", "2.28.9", "--quiet")
    assert same.returncode == 0 and "warning" not in same.stderr and "NCCL 2.28.9 rules + calibration," in same.stdout


def test_a_measurement_s_csv_rows_name_no_nccl_rules(tmp_path):
    """The column is there (the same columns as an estimate's) and empty: a measurement was made by no rule."""
    comparison = synthetic_comparison()
    write_csv(comparison, tmp_path / "long.csv")
    write_summary_csv(comparison, tmp_path / "summary.csv")
    for name in ("long.csv", "summary.csv"):
        frame = pd.read_csv(tmp_path / name)
        assert frame.columns[-1] == "rules_nccl" and frame["rules_nccl"].isna().all() and len(frame) > 0


@pytest.mark.parametrize("args, message", [
    (("--tp", "8", "--nccl", "2.32.0"), "--nccl 2.32.0: the rules were read for NCCL 2.27.3"),
    (("--tp", "8", "--nccl", "latest"), "give a version such as 2.28.9"),
    (("--tp", "8", "--network", "roce"), "--network 'roce': one of ib-gdr, ib, socket"),
    (("--tp", "8", "--nic-gbps", "0"), "--nic-gbps 0"),
])
def test_bad_nccl_or_network_is_one_line_and_exit_2(memprobe, args, message):
    result = memprobe("estimate", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------- networks

def test_inter_node_channels_per_network():
    settings = nccl.NcclSettings(cumem=False)
    ib = nccl.channels(16, 2, H200, 8, settings, nccl.Network.of("ib-gdr"))
    assert (ib.search, ib.speed, ib.collective) == (8, 48.0, 16)  # one channel per 400 Gb/s NIC at 48 GB/s, x2
    assert nccl.channels(16, 2, H200, 8, settings, nccl.Network.of("ib")) == ib  # GPUDirect is not in the search
    socket = nccl.channels(16, 2, H200, 1, settings, nccl.Network.of("socket"))
    assert (socket.search, socket.speed, socket.collective, socket.p2p) == (1, 1.2, 2, 2)
    fast = nccl.channels(16, 2, H200, 1, settings, nccl.Network.of("socket", 100))
    assert (fast.search, fast.speed, fast.collective) == (1, 12.0, 2)
    slow_ib = nccl.channels(16, 2, H200, 8, settings, nccl.Network.of("ib-gdr", 200))  # 25 GB/s: 24 GB/s channels
    assert (slow_ib.search, slow_ib.speed) == (8, 24.0)


def test_without_gpudirect_net_buffers_leave_the_gpu_and_the_pool_stays():
    settings = nccl.NcclSettings(cumem=False)
    parts = {kind: nccl.communicator(0, 16, 8, H200, 8, settings, nccl.Network.of(kind)) for kind in nccl.NETWORKS}
    kinds = {kind: {part.kind for part in estimate.init_parts} for kind, estimate in parts.items()}
    assert {"NET receive buffers", "NET send buffers", "shared NET pool"} <= kinds["ib-gdr"]
    assert "NET receive buffers" not in kinds["ib"] and "shared NET pool" in kinds["ib"]
    net = sum(p.bytes for p in parts["ib-gdr"].init_parts if p.kind.startswith("NET"))
    assert parts["ib-gdr"].bytes - parts["ib"].bytes == net > 0


def test_default_network_is_the_old_assumption():
    default = api.estimate(tp=16, ep=8, gpus_per_node=8, progress=False, nccl="2.28.9")
    explicit = api.estimate(tp=16, ep=8, gpus_per_node=8, progress=False, nccl="2.28.9", network="ib-gdr", nic_gbps=400)
    assert _readings(default) == _readings(explicit)
    assert "InfiniBand with GPUDirect RDMA, 400 Gb/s" in default.runs[0].run.record.environment["estimate"]["topology"]


def test_nccl_hostid_names_the_node(monkeypatch):
    monkeypatch.delenv("NCCL_HOSTID", raising=False)
    plain = nccl_host()
    monkeypatch.setenv("NCCL_HOSTID", "node-3")
    assert nccl_host() == f"{plain}/NCCL_HOSTID=node-3"


@pytest.fixture(scope="module")
def socket_checks():
    calibrations = {c.gpu_model: c for c in map(load_calibration, packaged_calibrations())}
    return [check_run(where, run, calibrations.get) for where, run in measured_runs([SOCKET_RUNS])]


def test_socket_node_runs_are_checked_as_nodes_over_sockets(socket_checks):
    checked = [result for result in socket_checks if not result.skipped]
    assert {result.network for result in checked} == {"socket"}
    assert {result.world_size for result in checked} == {2, 4}
    # 2 nodes: tp2, tp2-ep2-full (lean measures the same); 4 nodes: tp4 and both stacks; cuMem off and on; and the
    # two diagnostic runs that leave the algorithm to NCCL
    assert len(checked) == 12
    for result in socket_checks:
        assert (not result.skipped or "another node gathered the run" in result.skipped
                or "sets NCCL_ALGO, which the rules do not model" in result.skipped), result.skipped


def test_channel_counts_nccl_logged_over_sockets_are_the_rules():
    """Every communicator NCCL initialised in the socket runs: its logged channel counts against the rules."""
    comm = re.compile(r"comm (0x[0-9a-f]+) rank \d+ nRanks (\d+) nNodes (\d+)")
    counts = re.compile(r"(\d+) coll channels, \d+ collnet channels, \d+ nvls channels, (\d+) p2p channels")
    seen = 0
    for log in sorted(SOCKET_RUNS.glob("**/nccl-logs/*.log")):
        shape = None
        for line in log.read_text().splitlines():
            if found := comm.search(line):
                shape = (int(found.group(2)), int(found.group(3)))
            elif (found := counts.search(line)) and shape:
                ranks, nodes = shape
                settings = nccl.NcclSettings(cumem=False)
                rules = nccl.channels(ranks, nodes, H200, 1, settings, nccl.Network.of("socket"))
                assert (rules.collective, rules.p2p) == (int(found.group(1)), int(found.group(2))), (log, line)
                seen += 1
    assert seen >= 40


def test_warmup_algorithm_is_the_ring_on_one_node_and_two_single_gpu_nodes_and_the_tree_beyond():
    assert [nccl.warmup_algorithm(n, 1) for n in (2, 4, 8)] == ["ring"] * 3
    assert nccl.warmup_algorithm(2, 2) == "ring"  # the calibration's pair: its first communicator ran the ring kernel
    assert [nccl.warmup_algorithm(n, n) for n in (3, 4, 8)] == ["tree"] * 3
    assert nccl.warmup_algorithm(16, 2) == "tree"
    grown = nccl.local_memory(nccl.WARMUP_KERNEL_STACK["tree"], 132) - nccl.local_memory(nccl.WARMUP_KERNEL_STACK["ring"], 132)
    assert grown == 30 * MiB


def test_four_node_runs_fail_without_the_tree_kernels_local_memory(monkeypatch):
    """Give the tree kernel the ring's stack: the first 4-node communicator's extra local memory is gone, and the
    backtest of the 4-node runs leaves its bound."""
    calibrations = {c.gpu_model: c for c in map(load_calibration, packaged_calibrations())}
    where = SOCKET_RUNS / "nodes4-cumem0" / "node0" / "runs" / "nodes4-cumem0" / "tp4"
    run = dict(measured_runs([where]))[str(where)]
    assert check_run(str(where), run, calibrations.get).within
    monkeypatch.setitem(nccl.WARMUP_KERNEL_STACK, "tree", nccl.WARMUP_KERNEL_STACK["ring"])
    nccl.communicator.cache_clear()
    try:
        assert not check_run(str(where), run, calibrations.get).within
    finally:
        monkeypatch.undo()
        nccl.communicator.cache_clear()


def test_the_warmup_algorithm_nccl_logged_is_the_rules():
    """The diagnostic runs logged NCCL's choice for every 4-byte all-reduce (NCCL_DEBUG_SUBSYS=TUNING)."""
    comm = re.compile(r"comm 0x[0-9a-f]+ rank \d+ nRanks (\d+) nNodes (\d+)")
    chosen = re.compile(r"AllReduce: 4 Bytes -> Algo (\w+) proto LL")
    seen = 0
    for log in sorted(SOCKET_RUNS.glob("diagnostic-algorithm/default-*/nccl-logs/*.log")):
        shape = None
        for line in log.read_text().splitlines():
            if found := comm.search(line):
                shape = (int(found.group(1)), int(found.group(2)))
            elif (found := chosen.search(line)) and shape:
                assert found.group(1).lower() == nccl.warmup_algorithm(*shape), (log, shape, line)
                seen += 1
    assert seen >= 6


def test_without_an_installed_nccl_an_engine_pin_wins_over_the_calibration(monkeypatch):
    """A CPU-only torch brings no NCCL: an engine whose decisions depend on the NCCL release (vLLM 0.33.0's PyNccl)
    is estimated with the NCCL its release pins, not the calibration's; an installed NCCL or --nccl still wins."""
    pin = ("2.30.7", "vLLM 0.33.0's pin")
    monkeypatch.setattr(nccl_versions, "installed_nccl", lambda: None)
    assert nccl_versions.resolve(None, "2.28.9", pin)[:2] == pin
    assert nccl_versions.resolve("2.29.2", "2.28.9", pin)[:2] == ("2.29.2", "--nccl")
    monkeypatch.setattr(nccl_versions, "installed_nccl", lambda: ("2.28.9", "nvidia-nccl-cu13 2.28.9 (installed)"))
    assert nccl_versions.resolve(None, "2.28.9", pin)[0] == "2.28.9"

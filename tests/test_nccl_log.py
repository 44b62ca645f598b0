"""NCCL's debug-log parser (memprobe/analysis/nccl_log.py) on real NCCL 2.28.9 log excerpts, and NCCL's account
of each communicator beside the step bytes (analysis/nccl_account.py). Fixtures: tests/fixtures/nccl/README.md."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from memprobe.analysis import nccl_log as N
from memprobe.analysis.attribution import Split
from memprobe.analysis.nccl_account import run_account
from memprobe.model.run_files import load_run

FX = Path(__file__).parent / "fixtures" / "nccl"
MIB = 1 << 20


# ------------------------------------------------------------------------------------------------ line format

def test_parse_line_info_and_warn_prefixes():
    ll = N.parse_line("vm:1662:1729 [3] NCCL INFO transport/p2p.cc:233 Cuda Alloc Size 10485760 pointer 0x7fc2ae200000")
    assert (ll.host, ll.pid, ll.tid, ll.dev, ll.level) == ("vm", 1662, 1729, 3, "INFO")
    assert ll.msg.startswith("transport/p2p.cc:233 Cuda Alloc Size")
    warn = N.parse_line("[2026-11-28 01:39:14] vm:1662:1662 [3] init.cc:100 NCCL WARN something failed")
    assert warn.level == "WARN" and warn.msg == "something failed"
    assert N.parse_line("not an NCCL line") is None


def test_alloc_messages_228_and_229_formats():
    a = N._parse_alloc(N.parse_line("vm:1:1 [0] NCCL INFO channel.cc:42 Cuda Alloc Size 2432 pointer 0x7fcb06000000"), False)
    assert (a.site, a.bytes, a.memory, a.allocator, a.kind) == ("channel.cc:42", 2432, "device", "cudaMalloc", "channels")
    h = N._parse_alloc(N.parse_line("vm:1:1 [0] NCCL INFO init.cc:556 Cuda Host Alloc Size 1048576 pointer 0x7f00"), False)
    assert (h.memory, h.kind) == ("host", "work_fifo")
    # 2.29+: function name after the line and memType at the end
    b = N._parse_alloc(N.parse_line("vm:1:1 [0] NCCL INFO transport/net.cc:700 (sharedNetBuffersInit) Cuda Alloc Size "
                                    "268435456 pointer 0x7f00 memType 1"), True)
    assert (b.func, b.memtype, b.allocator, b.memory) == ("sharedNetBuffersInit", 1, "cuMem", "device")
    c = N._parse_alloc(N.parse_line("vm:1:1 [0] NCCL INFO channel.cc:56 Cuda Alloc Size 16 pointer 0x7f0000200000"), True)
    assert c.rounded_bytes == 2 * MIB  # cuMem rounds every allocation to the 2 MiB granularity
    shm = N._parse_alloc(N.parse_line("vm:1:7 [3] NCCL INFO Allocated 34210180 bytes of shared memory in /dev/shm/nccl-x"), False)
    assert (shm.memory, shm.kind, shm.bytes) == ("host", "proxy_shm", 34210180)


# ------------------------------------------------------------------------------------------- communicators

def test_two_comms_identity_order_and_kinds():
    log = N.parse_file(FX / "maxctas-rank3-two-comms.log")
    assert log.version == "2.28.9+cuda13.0" and log.pid == 2556 and log.cuda_dev == 3 and log.cumem is False
    tp, ep = log.communicators
    assert (tp.index, tp.api, tp.rank, tp.nranks, tp.cuda_dev, tp.bus_id) == (0, "ncclCommInitRank", 3, 4, 3, "90")
    assert (ep.index, ep.rank, ep.nranks) == (1, 1, 2)
    assert tp.comm_id and tp.comm_id != ep.comm_id
    assert tp.channel_counts == {"coll": 4, "collnet": 4, "nvls": 0, "p2p": 4, "p2pPerPeer": 4}
    # rank 3 of a 4-rank chain: ring recv from 2 / send to 0, tree leaf under 2 -> 4 receive + 8 send buffers
    assert tp.counts()["p2p_recv_buffers"] == 4 and tp.counts()["p2p_send_buffers"] == 8
    s = tp.summary()
    assert s["p2p_recv_buffers"] == 4 * 10 * MIB and s["p2p_send_buffers"] == 8 * 2 * MIB
    assert s["net_shared_buffers"] == 4 * 16 * 524288  # p2p channels x NCCL_SHARED_STEPS x P2P chunk = 32 MiB
    assert tp.total() == 88 * MIB + s["channels"] + s["devcomm"]
    assert ep.summary()["p2p_recv_buffers"] == 4 * 10 * MIB and ep.summary()["p2p_send_buffers"] == 4 * 2 * MIB
    # every device allocation of this log falls inside an init window (cuMem off: no lazy connect); the host
    # memory-stack chunk after Init COMPLETE is the warm-up all-reduce's enqueue (phase connect)
    assert {a.phase for c in log.communicators for a in c.allocations if a.memory == "device"} == {"init"}


def test_shareable_buffer_lines_are_not_double_counted():
    log = N.parse_file(FX / "maxctas-rank3-two-comms.log")
    tp = log.communicators[0]
    p2p = [a for a in tp.allocations if a.kind.startswith("p2p_") and a.kind != "p2p_ipc_probe"]
    assert len(p2p) == 12 and len({a.pointer for a in p2p}) == 12
    assert all(a.site == "transport/p2p.cc:233" for a in p2p)


def test_ipc_probe_is_transient_and_left_out():
    tp = N.parse_file(FX / "maxctas-rank3-two-comms.log").communicators[0]
    probe = [a for a in tp.allocations if a.kind == "p2p_ipc_probe"]
    assert len(probe) == 1 and probe[0].bytes == 2 * MIB and probe[0].transient  # its address is reused by channel.cc:42
    assert "p2p_ipc_probe" not in tp.summary()


def test_proxy_thread_and_pre_init_attribution():
    log = N.parse_file(FX / "maxctas-rank3-two-comms.log")
    tp, ep = log.communicators
    assert tp.main_tid == 2556 and tp.proxy_tids and ep.proxy_tids and not set(tp.proxy_tids) & set(ep.proxy_tids)
    # buffers are allocated by the comm's proxy thread, not the main thread
    assert {a.tid for a in tp.allocations if a.kind == "p2p_recv_buffers"} <= set(tp.proxy_tids)
    # the 4-byte abortFlag (init.cc:1994) is logged before its comm's Init START: it belongs to the next comm
    abort = [a for a in ep.allocations if a.kind == "abort_flag"]
    assert len(abort) == 1 and abort[0].how == "next_start" and abort[0].lineno < ep.init_start_line
    # the fixture is cut after the third comm's pre-init lines: its abortFlag waits in "process"
    assert [a.how for a in log.process.allocations if a.kind == "abort_flag"] == ["pending"]


def test_rank_asymmetry_from_ring_and_tree():
    logs = {r: N.parse_file(FX / f) for r, f in ((0, "maxctas-2553-first-comm.log"), (1, "maxctas-2554-first-comm.log"),
                                                 (3, "maxctas-rank3-two-comms.log"))}
    N.share_rings(logs)  # the ring order is printed by the comm's rank 0 only
    tps = {r: log.communicators[0] for r, log in logs.items()}
    assert tps[0].rings[0] == [0, 1, 2, 3] and tps[3].rings[0] == [0, 1, 2, 3]
    assert tps[0].topology()["tree (parent, children): channels"] == {(-1, (1,)): 4}   # root
    assert tps[3].topology()["tree (parent, children): channels"] == {(2, ()): 4}      # leaf
    expected = {0: ({1: 4, 3: 4}, {1: 4}), 1: ({0: 4, 2: 4}, {0: 4, 2: 4}), 3: ({2: 4}, {0: 4, 2: 4})}
    for r, (recv, send) in expected.items():
        plan = tps[r].connection_plan()
        assert plan == {"recv": recv, "send": send}
        counts = tps[r].counts()
        assert counts["p2p_recv_buffers"] == sum(recv.values()) and counts["p2p_send_buffers"] == sum(send.values())
    # middle ranks hold the most: rank 1 = 80 + 16 MiB of P2P buffers, rank 0 = 80 + 8, rank 3 = 40 + 16
    p2p = {r: c.summary()["p2p_recv_buffers"] + c.summary()["p2p_send_buffers"] for r, c in tps.items()}
    assert p2p == {0: 88 * MIB, 1: 96 * MIB, 3: 56 * MIB}


def test_cumem_lazy_connect_after_init_complete():
    log = N.parse_file(FX / "cumem1-rank0-first-comm.log")
    assert log.cumem is True  # detected from "via P2P/CUMEM"
    c = log.communicators[0]
    init, connect = c.summary("init"), c.summary("connect")
    # init: only per-channel structures, each a 2 MiB cuMem allocation: initChannel runs for the 32 p2p channels
    # (not only the 24 collective ones), 3 allocations each, + devComm 2
    assert init == {"channels": 96 * 2 * MIB, "devcomm": 2 * 2 * MIB}
    # first all-reduce (1 element) connects the ring only: 24 receive + 24 send buffers, no NET shared pool
    assert connect == {"p2p_recv_buffers": 24 * 10 * MIB, "p2p_send_buffers": 24 * 2 * MIB}
    assert {a.how for a in c.live("connect")} == {"tid"}  # allocated by this comm's proxy thread
    assert {x.via for x in c.connections} == {"P2P/CUMEM"} and {x.phase for x in c.connections} == {"connect"}
    assert c.connection_plan(("ring",)) == {"recv": {3: 24}, "send": {1: 24}}
    assert any("Connected all rings" in m for m in c.markers)


def test_all_subsystems_excerpt_collective_and_shared_init():
    log = N.parse_file(FX / "all-rank3-excerpt.log")
    assert log.cumem is False  # NCCL_CUMEM_ENABLE set by environment to 0. (ENV subsystem)
    c = log.communicators[0]
    assert c.collectives == ["AllReduce opCount 0"]
    net = [a for a in c.allocations if a.kind == "net_shared_buffers"]
    assert len(net) == 1 and net[0].bytes == 256 * MIB and net[0].site == "transport/net.cc:656"
    assert c.init_complete_line and c.init_seconds == 0.57
    assert log.communicators[1].init_start_line > c.init_complete_line


def test_protocol_split_is_consistent():
    tp = N.parse_file(FX / "maxctas-rank3-two-comms.log").communicators[0]
    split = N.p2p_protocol_split(tp)
    assert split["n_recv"] == 4 and split["n_send"] == 8
    assert split["LL"] == 4 * 524288 and split["LL128"] == 4 * 4915200 and split["Simple"] == 4 * 4194304
    total = tp.summary()["p2p_recv_buffers"] + tp.summary()["p2p_send_buffers"]
    assert split["LL"] + split["LL128"] + split["Simple"] + split["control_and_padding"] == total
    # NCCL_BUFFSIZE=1 MiB: a receive buffer is LL + LL128 + 1 MiB -> rounded to 8 MiB
    assert N.buff_sizes({"NCCL_BUFFSIZE": "1048576"})["Simple"] == 1 << 20


# ---------------------------------------------------------------------------------------------- run mapping

def _maxctas_run(tmp_path: Path) -> Path:
    """The MAX_CTAS=4 run folder (run.json, readings.csv) with the three excerpts as its nccl/ logs."""
    run = tmp_path / "run"
    shutil.copytree(FX / "maxctas-run", run)
    logs = run / "nccl"
    logs.mkdir()
    shutil.copy(FX / "maxctas-2553-first-comm.log", logs / "vm.2553.log")
    shutil.copy(FX / "maxctas-2554-first-comm.log", logs / "vm.2554.log")
    shutil.copy(FX / "maxctas-rank3-two-comms.log", logs / "vm.2556.log")
    (logs / "vm.999.log").write_text("vm:999:999 [0] NCCL INFO NCCL version 2.28.9+cuda13.0\n")  # not a rank
    return run


def test_map_logs_by_pid(tmp_path):
    run = _maxctas_run(tmp_path)
    pids = {info.rank: info.pid for info in load_run(run).record.ranks}
    logs = run / "nccl"
    assert N.map_logs(pids, logs) == {0: logs / "vm.2553.log", 1: logs / "vm.2554.log", 3: logs / "vm.2556.log"}
    parsed = N.parse_logs(pids, {"NCCL_MAX_CTAS": "4", "NCCL_CUMEM_ENABLE": "0"}, logs)
    assert parsed[3].env["NCCL_MAX_CTAS"] == "4" and parsed[3].cumem is False
    assert parsed[1].communicators[0].rings[0] == [0, 1, 2, 3]  # shared from rank 0
    labels = N.label_communicators(parsed[3], [("tp pynccl", 4), ("moe_ep pynccl", 2)])
    assert sorted(labels.values()) == ["moe_ep pynccl", "tp pynccl"]


def test_account_beside_the_step_bytes(tmp_path):
    account = run_account(load_run(_maxctas_run(tmp_path)))
    assert account.nccl_version == "2.28.9+cuda13.0" and account.cumem is False and account.ranks_without_log == [2]
    by = {(a.rank, a.label): a for a in account.accounts}
    tp3, ep3 = by[(3, "tp pynccl")], by[(3, "moe_ep pynccl")]
    assert (tp3.nccl_rank, tp3.nranks, ep3.nccl_rank, ep3.nranks) == (3, 4, 1, 2)
    # readings.csv of the same run: moe_ep pynccl added 82 MiB on rank 3, 2 of them torch's warm-up segment;
    # NCCL logged 40 + 8 receive/send + 32 NET pool + <0.1 channels: nothing left unexplained
    assert (ep3.step_bytes, ep3.torch_cache_bytes) == (82 * MIB, 2 * MIB)
    assert ep3.remainder == pytest.approx(0, abs=0.1 * MIB) and ep3.kinds["net_shared_buffers"] == 32 * MIB
    # the first communicator of the process carries ~358 MiB that no NCCL line names
    assert tp3.step_bytes == 448 * MIB and tp3.remainder == pytest.approx(358 * MIB, abs=0.1 * MIB)
    # why ranks differ: rank 3 (ring end, tree leaf) receives from one peer, rank 1 from two
    assert (tp3.receive_from, tp3.send_to) == ({2: 4}, {0: 4, 2: 4}) and tp3.algorithms == "ring + tree"
    tp1 = by[(1, "tp pynccl")]
    assert (tp1.receive_from, tp1.send_to) == ({0: 4, 2: 4}, {0: 4, 2: 4})
    assert tp1.logged_bytes - tp3.logged_bytes == 4 * 10 * MIB


def test_log_pid_from_name_or_content(tmp_path):
    p = tmp_path / "somehost.1234.log"
    p.write_text("")
    assert N.log_pid(p) == 1234
    q = tmp_path / "nccl.log"
    q.write_text("vm:4321:4321 [0] NCCL INFO NCCL version 2.28.9+cuda13.0\n")
    assert N.log_pid(q) == 4321


def test_summary_rows_and_json():
    log = N.parse_file(FX / "maxctas-rank3-two-comms.log")
    rows = log.summary()
    assert [r["comm"] for r in rows][0] == "process" and len(rows) == 3
    assert rows[1]["device_init"]["p2p_recv_buffers"] == 40 * MIB and rows[1]["device_connect"] == {}
    assert rows[1]["host"]["work_fifo"] == 1 << 20
    assert '"communicators"' in log.to_json()


# ------------------------------------------------------------------------------------ committed GPU runs

GPU = Path(__file__).resolve().parent.parent / "results" / "h200x4-nccl-20261128" / "runs"


def test_committed_sglang_preset_account_explains_the_546_mib_and_the_rank_asymmetry():
    """What docs/attribution.md's "NCCL's own account" says, read from the committed files."""
    account = run_account(load_run(GPU / "trace"))
    by = {(a.rank, a.label): a for a in account.accounts}
    assert len(account.accounts) == 4 * 7 and account.cumem is False
    ep = by[(0, "moe_ep pynccl")]
    assert (ep.step_bytes, ep.torch_cache_bytes) == (546 * MIB, 2 * MIB)
    assert (ep.kinds["p2p_recv_buffers"], ep.counts["p2p_recv_buffers"]) == (240 * MIB, 24)
    assert (ep.kinds["p2p_send_buffers"], ep.counts["p2p_send_buffers"]) == (48 * MIB, 24)
    assert ep.kinds["net_shared_buffers"] == 256 * MIB and abs(ep.remainder) < MIB // 4
    tp = {rank: by[(rank, "tp pynccl")] for rank in range(4)}
    assert [t.step_bytes // MIB for t in tp.values()] == [1144, 1192, 1192, 952]
    assert {t.remainder // MIB for t in tp.values()} == {357}  # the same unlogged ~358 MiB on every rank
    assert tp[1].logged_bytes - tp[3].logged_bytes == 240 * MIB == tp[1].kinds["p2p_recv_buffers"] - tp[3].kinds["p2p_recv_buffers"]
    assert tp[1].logged_bytes - tp[0].logged_bytes == 48 * MIB == tp[1].kinds["p2p_send_buffers"] - tp[0].kinds["p2p_send_buffers"]
    assert (tp[0].receive_from, tp[0].send_to) == ({1: 24, 3: 24}, {1: 24})
    assert (tp[3].receive_from, tp[3].send_to) == ({2: 24}, {0: 24, 2: 24})


def test_committed_cumem_account_has_equal_ranks_and_no_net_pool():
    account = run_account(load_run(GPU / "trace-cumem1"))
    tp = [a for a in account.accounts if a.label == "tp pynccl"]
    assert account.cumem is True and {a.logged_bytes for a in tp} == {484 * MIB}
    assert all("net_shared_buffers" not in a.kinds and a.kinds["channels"] == 192 * MIB for a in tp)
    assert all(a.connect_bytes == 288 * MIB and a.algorithms == "ring" for a in tp)


def test_committed_split_adds_up_and_tracing_costs_no_bytes():
    from memprobe.analysis.attribution import components_by_rank, splits_by_rank

    splits = splits_by_rank(load_run(GPU / "trace"))
    for parts in splits.values():
        assert parts["tp/custom_allreduce"] == Split(44 * MIB, 20 * MIB)  # 24 MiB buffers + a 20 MiB torch segment
        assert parts["moe_ep/custom_allreduce"] == Split(82 * MIB, 0)
        assert all(s.total is None or s.torch_cache + s.rest == s.total for s in parts.values())
    assert components_by_rank(load_run(GPU / "plain")) == components_by_rank(load_run(GPU / "trace"))


def test_split_and_nccl_log_options_through_the_cpu_pipeline(replay_folder, capsys, monkeypatch):
    """What the parent does with --nccl-log and --split (the workers' environment, the folder for NCCL's files, the
    tables), on a replayed CPU launch (replay_support.py): gloo on CPU, so NCCL never starts."""
    from replay_support import healthy_script, memprobe, replay

    tmp_path = replay_folder
    replay(monkeypatch, healthy_script("r"))
    code, stdout, stderr = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--nccl-log", "--split",
                                    "--run-id", "r")
    assert code == 0, stderr
    run = load_run(tmp_path / "memprobe-runs" / "r")
    nccl_env = run.record.environment["nccl_env"]
    assert (nccl_env["NCCL_DEBUG"], nccl_env["NCCL_DEBUG_SUBSYS"]) == ("INFO", "ALLOC,INIT")
    assert nccl_env["NCCL_DEBUG_FILE"] == str((tmp_path / "memprobe-runs" / "r" / "nccl").resolve() / "%h.%p.log")
    assert (tmp_path / "memprobe-runs" / "r" / "nccl").is_dir()
    assert "split into torch cache" in stdout and "the split is not available" in stdout
    assert "no NCCL logs of this run's ranks" in stdout  # gloo on CPU: NCCL never starts


def test_bench_reference_groups_match_memprobe_plan_without_importing_memprobe():
    """bench/reference.py is an independent check: its own group arithmetic, no memprobe import."""
    import ast
    import importlib.util

    from memprobe.engines.sglang.layout import SGLangLayout as Layout, plan_groups

    path = Path(__file__).resolve().parent.parent / "bench" / "reference.py"
    imported = {node.module if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    assert not any(name and name.split(".")[0] == "memprobe" for name in imported), imported
    spec = importlib.util.spec_from_file_location("bench_reference", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    for tp, ep in ((2, 2), (4, 2), (4, 4), (8, 2), (8, 4)):
        plan = {g.name: [list(r) for r in g.rank_lists] for g in plan_groups(Layout(tp=tp, ep=ep)).groups if not g.is_alias}
        for name, rank_lists in reference.sglang_groups(tp, tp, ep).items():
            if name in plan:
                assert sorted(rank_lists) == sorted(plan[name]), (tp, ep, name)


def test_tables_median_is_the_true_median():
    from memprobe.analysis.attribution import spread

    # tp pynccl on 4 x H200 (results/h200x4-20261127/runs/tp4-ep2-full): the median of 4 ranks is the mean of
    # the two middle values, 1,166 MiB, not the lower one (1,142)
    values = {0: 1142 * MIB, 1: 1190 * MIB, 2: 1190 * MIB, 3: 950 * MIB}
    assert spread(values).median == 1166 * MIB
    assert spread({0: 1, 1: 2, 2: 9}).median == 2


@pytest.mark.parametrize("run, four_ranks, two_ranks, net_pool", [
    ("trace", [784, 832, 832, 592], 544, 256), ("trace-cumem1", [484] * 4, 484, 0),
    ("trace-buffsize", [496, 544, 544, 352], 304, 64), ("trace-maxctas", [120, 128, 128, 88], 80, 32)])
def test_committed_knob_table_of_the_readme(run, four_ranks, two_ranks, net_pool):
    accounts = run_account(load_run(GPU / run)).accounts
    tp = sorted((a for a in accounts if a.label == "tp pynccl"), key=lambda a: a.rank)
    assert [round(a.logged_bytes / MIB) for a in tp] == four_ranks
    ep = [a for a in accounts if a.label == "moe_ep pynccl"]
    assert {round(a.logged_bytes / MIB) for a in ep} == {two_ranks}
    assert {a.kinds.get("net_shared_buffers", 0) for a in tp + ep} == {net_pool * MIB}
    assert {round(a.remainder / MIB) for a in tp} <= {356, 358}


def test_a_gzipped_log_reads_as_the_plain_one(tmp_path):
    """Committed logs are kept gzipped (results/**/nccl/*.log.gz): the parser, the pid and the run's logs see no difference."""
    plain = FX / "maxctas-rank3-two-comms.log"
    packed = tmp_path / "vm.2556.log.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(plain.read_text(encoding="utf-8"))
    assert N.parse_file(packed).to_json().replace(str(packed), "PATH") == N.parse_file(plain).to_json().replace(str(plain), "PATH")
    assert N.log_pid(packed) == 2556 and N.log_files(tmp_path) == [packed]

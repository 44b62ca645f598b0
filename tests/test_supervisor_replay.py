"""The supervisor, follower and root cause on replayed launches, in a second or less each: memprobe's own CLI
(``main``) in this process, torchrun replaced by ``launch_replay.py`` writing what real CPU launches wrote
(``tests/fixtures/launch/``). What only real processes show (torchrun, gloo, the parent-death signal, host
memory) stays in the ``e2e`` tests."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from memprobe import api
from memprobe.launch.options import LaunchOptions
from memprobe.launch.processes import free_port
from memprobe.model.records import stream_path
from memprobe.model.run_files import load_run
from memprobe.model.events import ResultsLocation
from memprobe.model.timings import PHASES
from replay_support import FIXTURES, Script, after, fixture_lines, healthy_script, memprobe, pids_in, replay, up_to

TWO_SCENARIOS = """
[defaults]
tp = 2
stack = "full"
[[scenario]]
name = "healthy"
[[scenario]]
name = "faulty"
env = {{ MEMPROBE_TEST_FAULT = "{fault}" }}
"""


@pytest.fixture
def here(replay_folder):
    return replay_folder


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def ranks_of(case: str) -> tuple[list[str], list[str]]:
    return fixture_lines(case, 0), fixture_lines(case, 1)


def hung_script(scenario: str, ranks=(0, 1), **spawn) -> Script:
    """Rank 1 stops after its tp/before reading; rank 0 arrived at tp/groups_created and waits for it there."""
    r0, r1 = ranks_of("healthy")
    script = Script().spawn("rank0", *pids_in(r0), **spawn).spawn("rank1", *pids_in(r1), **spawn)
    if 0 in ranks:
        script.stream(scenario, 0, up_to(r0, "arrived", "tp", "groups_created"))
    if 1 in ranks:
        script.stream(scenario, 1, up_to(r1, "reading", "tp", "before"))
    return script


def error_line(case: str, recorded_rank: int, **fields) -> str:
    """A recorded error event moved to another rank, group or step (the worker writes sorted keys)."""
    [line] = [line for line in fixture_lines(case, recorded_rank) if "\"type\": \"error\"" in line]
    return json.dumps({**json.loads(line), **fields}, sort_keys=True) + "\n"


# ------------------------------------------------------------------------------ a healthy launch

def test_a_healthy_launch_is_complete_with_every_phase_timed(here, capsys, monkeypatch):
    replays = replay(monkeypatch, healthy_script("ok"))
    code, out, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "ok")
    assert code == 0, err
    run = load_run(here / "memprobe-runs" / "ok")
    assert run.record.status == "complete" and run.record.failure is None
    assert sorted({r.rank for r in run.readings}) == [0, 1] and len(run.readings) == 2 * 35
    assert sorted(info.rank for info in run.record.ranks) == [0, 1]
    phases = run.record.timings.phases
    assert all(phases[name] is not None for name in PHASES if name not in ("gpu_release",))
    assert "total after first use" in out
    assert not any(path.exists() for path in replays.log_dirs)


def test_ranks_that_read_alike_come_back_from_a_launch_once_per_class(here, monkeypatch, tmp_path):
    """The gathered readings.csv of a launch whose two ranks read alike (rank 1's rows made rank 0's): the run compare
    and run render from holds one class, as report loads it."""
    header, *rows = (FIXTURES / "healthy" / "readings.csv").read_text().splitlines()
    rank0 = [row for row in rows if row.startswith("0,")]
    alike = tmp_path / "readings.csv"
    alike.write_text("\n".join([header, *rank0, *(f"1,{row[2:]}" for row in rank0)]) + "\n")
    r0, r1 = ranks_of("healthy")
    script = Script().spawn("rank0", *pids_in(r0)).spawn("rank1", *pids_in(r1))
    script.stream("alike", 0, up_to(r0, "reading", "", "end")).stream("alike", 1, up_to(r1, "reading", "", "end"))
    script.file("alike", "readings.csv", alike).file("alike", "ranks.json", FIXTURES / "healthy" / "ranks.json")
    script.stream("alike", 0, after(r0, "reading", "", "end")).stream("alike", 1, after(r1, "reading", "", "end"))
    replay(monkeypatch, script.finish("rank0").finish("rank1"))
    run = api.run(tp=2, launch=LaunchOptions(device="cpu", run_id="alike", progress=False)).run
    assert run.record.status == "complete" and run.classes == {0: 0, 1: 0} and len(run.readings) == len(rank0) == 35


def test_a_run_longer_than_the_timeout_completes_while_every_rank_keeps_reading(here, capsys, monkeypatch):
    """--timeout is the longest a rank may go without a sign of life, not the run's length."""
    r0, r1 = ranks_of("healthy")
    script = Script().spawn("rank0", *pids_in(r0)).spawn("rank1", *pids_in(r1))
    for group in ("tp", "moe_ep", "pp"):  # four stretches, three 0.6 s pauses, each shorter than the timeout
        script.stream("slow", 0, up_to(r0, "reading", group, "before")).stream("slow", 1, up_to(r1, "reading", group, "before"))
        r0, r1 = after(r0, "reading", group, "before"), after(r1, "reading", group, "before")
        script.sleep(0.6)
    script.stream("slow", 0, up_to(r0, "reading", "", "end")).stream("slow", 1, up_to(r1, "reading", "", "end"))
    script.file("slow", "readings.csv", FIXTURES / "healthy" / "readings.csv")
    script.file("slow", "ranks.json", FIXTURES / "healthy" / "ranks.json")
    script.stream("slow", 0, after(r0, "reading", "", "end")).stream("slow", 1, after(r1, "reading", "", "end"))
    script.finish("rank0").finish("rank1")
    replay(monkeypatch, script)
    code, _, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "slow", "--timeout", "1.5")
    assert code == 0, err
    run = load_run(here / "memprobe-runs" / "slow")
    assert run.record.status == "complete" and run.record.wall_time_s > 1.5


def test_a_taken_rendezvous_port_is_tried_again_on_another(here, capsys, monkeypatch):
    """torch's TCPStore could not bind the port probed free a moment before: nothing launched, so a new port."""
    taken = Script().log("torch.distributed.DistNetworkError: The server socket has failed to listen on any local "
                         "network address. port: 29511, useIpv6: 0, code: -98, name: EADDRINUSE, message: address "
                         "already in use").exit(1)
    replays = replay(monkeypatch, taken, healthy_script("again"))
    code, _, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "again")
    assert code == 0, err
    assert replays.scripts == [] and load_run(here / "memprobe-runs" / "again").record.status == "complete"


# ------------------------------------------------------------------------------ who is blamed

@pytest.mark.parametrize("rank, group, step, layout", [(1, "tp", "groups_created", ("--tp", "2", "--ep", "2")),
                                                       (0, "moe_ep", "pynccl", ("--tp", "2"))])
def test_a_rank_that_raises_is_blamed_not_the_peer_that_lost_it(here, capsys, monkeypatch, rank, group, step, layout):
    """The peer's "Connection closed by peer" is streamed first; the rank that raised is still the one named."""
    lines = ranks_of("healthy")
    peer = 1 - rank
    script = Script().spawn("rank0", *pids_in(lines[0])).spawn("rank1", *pids_in(lines[1]))
    script.stream("failing", peer, up_to(lines[peer], "arrived", group, step))
    script.stream("failing", peer, [error_line("raised", 0, rank=peer, group=group, step=step)])
    script.stream("failing", rank, up_to(lines[rank], "arrived", group, step))
    script.stream("failing", rank, [error_line("raised", 1, rank=rank, group=group, step=step,
                                               message=f"RuntimeError: injected fault at {group}/{step} (MEMPROBE_TEST_FAULT)")])
    script.log((FIXTURES / "raised" / "torchrun.log").read_text()).exit(1)
    replay(monkeypatch, script)
    code, _, err = memprobe(capsys, "run", "--device", "cpu", *layout, "--quiet", "--run-id", "failing")
    assert code == 3, err
    assert last_line(err) == (f"memprobe: error: {'tp2-ep2-lean' if '--ep' in layout else 'tp2-lean'}: rank {rank} failed at "
                              f"{group}/{step}: RuntimeError: injected fault at {group}/{step} (MEMPROBE_TEST_FAULT); "
                              "readings kept in memprobe-runs/failing")
    run = load_run(here / "memprobe-runs" / "failing")
    assert run.record.status == "incomplete" and run.record.failure.rank == rank
    assert run.record.failure.last_lines  # the worker's traceback
    assert {(rank, "world"), (peer, "world")} <= {(r.rank, r.step) for r in run.readings}  # finished readings kept


def test_a_killed_rank_is_named_from_torchrun_s_root_cause(here, capsys, monkeypatch):
    """Rank 1 SIGKILLed after its tp/groups_created reading; rank 0 then lost its peer. torchrun's own report
    (recorded) names rank 1 and the signal."""
    r0, r1 = ranks_of("killed")
    script = Script().spawn("rank0", *pids_in(r0)).spawn("rank1", *pids_in(r1))
    script.stream("killed", 1, r1).kill("rank1", signal.SIGKILL).stream("killed", 0, r0)
    script.log((FIXTURES / "killed" / "torchrun.log").read_text()).exit(1)
    replay(monkeypatch, script)
    code, _, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "killed")
    assert code == 3, err
    assert last_line(err) == ("memprobe: error: tp2-lean: rank 1 failed: exited without reporting an error after its "
                              "tp/groups_created reading (torchrun: exit code -9 (pid: 8586) (SIGKILL)); readings kept in "
                              "memprobe-runs/killed")
    run = load_run(here / "memprobe-runs" / "killed")
    assert run.record.status == "incomplete"
    assert any(r.rank == 1 and r.step == "groups_created" for r in run.readings)


# ------------------------------------------------------------------------------ silence

def test_a_hanging_rank_is_named_within_the_timeout_not_the_peer_waiting_for_it(here, capsys, monkeypatch):
    replay(monkeypatch, hung_script("hung"))
    started = time.monotonic()
    code, _, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "hung", "--timeout", "1")
    assert code == 3, err
    assert re.search(r"tp2-lean: rank 1 failed: stopped progressing after its tp/before reading: silent for \d+ s "
                     r"\(--timeout 1 s\)", last_line(err)), err
    assert time.monotonic() - started < 1 + 5
    assert load_run(here / "memprobe-runs" / "hung").record.status == "incomplete"


def test_a_timeout_shorter_than_start_up_says_so(here, capsys, monkeypatch):
    r0, r1 = ranks_of("healthy")
    script = Script().spawn("rank0", *pids_in(r0)).spawn("rank1", *pids_in(r1))
    script.stream("short", 0, up_to(r0, "launched")).stream("short", 1, up_to(r1, "launched"))  # then import torch
    replay(monkeypatch, script)
    code, _, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "short", "--timeout", "1")
    assert code == 3, err
    line = last_line(err)
    assert " failed" in line and "still starting" in line and "start-up" in line and "longer than the timeout" in line
    assert "never started" not in line
    run = load_run(here / "memprobe-runs" / "short")
    assert run.record.status == "incomplete" and run.readings == []


def test_a_run_folder_deleted_mid_run_is_one_line_exit_3(here, capsys, monkeypatch):
    # the streams went with the folder, so nothing names the launch's processes until the token search at the end
    monkeypatch.setattr("memprobe.launch.supervisor.KILL_GRACE_S", 0.5)
    r0, r1 = ranks_of("healthy")
    script = Script().spawn("rank0", *pids_in(r0)).spawn("rank1", *pids_in(r1))
    script.stream("deleted", 0, up_to(r0, "launched")).stream("deleted", 1, up_to(r1, "launched")).remove("deleted")
    replay(monkeypatch, script)
    code, _, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "deleted", "--timeout", "30")
    assert code == 3, err
    assert last_line(err).endswith("its run folder memprobe-runs/deleted was deleted while it ran; its readings went with it")
    assert "Traceback" not in err


# ------------------------------------------------------------------------------ signals to memprobe

def signal_when(stream: Path, text: str, numbers: list[int], gap_s: float = 0.0) -> threading.Thread:
    """Send ``numbers`` to this process, ``gap_s`` apart, once ``stream`` shows ``text`` (as a user would)."""

    def send() -> None:
        deadline = time.monotonic() + 30
        while not (stream.is_file() and text in stream.read_text()):
            if time.monotonic() > deadline:
                return  # never there: the test fails on its own, and pytest, not memprobe, would get the signal
            time.sleep(0.02)
        for number in numbers:
            os.kill(os.getpid(), number)
            time.sleep(gap_s)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stop_signal_stops_the_launch_and_keeps_the_readings(here, capsys, monkeypatch, number, code):
    replay(monkeypatch, hung_script("stopped"))
    sender = signal_when(stream_path(here / "memprobe-runs" / "stopped", 0), '"world"', [number])
    exit_code, _, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "stopped", "--timeout", "30")
    sender.join()
    name = signal.Signals(number).name
    assert exit_code == code, err
    assert last_line(err) == f"memprobe: error: interrupted by {name}; workers stopped, readings kept in memprobe-runs/stopped"
    run = load_run(here / "memprobe-runs" / "stopped")
    assert run.record.status == "incomplete" and name in run.record.failure.message
    assert any(r.step == "world" for r in run.readings)


def test_a_second_ctrl_c_hurries_the_cleanup_and_loses_nothing(here, capsys, monkeypatch):
    """Processes that ignore SIGTERM would get the whole grace before SIGKILL; a second SIGINT cuts it short,
    without an exception in the middle of the cleanup."""
    from memprobe.launch.processes import KILL_GRACE_S

    replay(monkeypatch, hung_script("twice", ignore_sigterm=True))
    sender = signal_when(stream_path(here / "memprobe-runs" / "twice", 0), '"world"', [signal.SIGINT, signal.SIGINT],
                         gap_s=0.5)
    code, _, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--run-id", "twice", "--timeout", "30")
    sender.join()
    assert code == 130, err
    assert err.strip().splitlines() == [last_line(err)] and "interrupted by SIGINT" in err and "readings kept" in err
    run_dir = here / "memprobe-runs" / "twice"
    assert (run_dir / "readings.csv").is_file()
    run = load_run(run_dir)
    assert run.record.status == "incomplete" and "SIGINT" in run.record.failure.message
    assert any(r.step == "world" for r in run.readings)
    assert run.record.wall_time_s < KILL_GRACE_S, "the second SIGINT did not skip the grace"


# ------------------------------------------------------------------------------ several scenarios in one launch

def two_scenario_launch(faulty: list[tuple[int, list[str]]], kill_faulty: bool) -> Script:
    """healthy and faulty side by side in one launch (recorded: ``two``), one launcher per rank forking both."""
    h0, h1 = ranks_of("two/healthy")
    f0, f1 = ranks_of("two/faulty")
    launchers = [pids_in(up_to(h0, "launched")), pids_in(up_to(h1, "launched"))]
    script = Script().spawn("launcher0", *launchers[0]).spawn("launcher1", *launchers[1])
    script.spawn("healthy0", *(pids_in(h0) - launchers[0])).spawn("healthy1", *(pids_in(h1) - launchers[1]))
    script.spawn("faulty0", *(pids_in(f0) - launchers[0])).spawn("faulty1", *(pids_in(f1) - launchers[1]))
    for rank, lines in faulty:
        script.stream("faulty", rank, lines)
    if kill_faulty:
        script.finish("faulty0").finish("faulty1")
    script.stream("healthy", 0, up_to(h0, "reading", "", "end")).stream("healthy", 1, up_to(h1, "reading", "", "end"))
    script.file("healthy", "readings.csv", FIXTURES / "two" / "healthy" / "readings.csv")
    script.file("healthy", "ranks.json", FIXTURES / "two" / "healthy" / "ranks.json")
    script.stream("healthy", 0, after(h0, "reading", "", "end")).stream("healthy", 1, after(h1, "reading", "", "end"))
    return script.finish("healthy0").finish("healthy1").finish("launcher0").finish("launcher1")


def test_a_failing_scenario_does_not_stop_the_one_beside_it(here, capsys, monkeypatch):
    f0, f1 = ranks_of("two/faulty")
    replay(monkeypatch, two_scenario_launch([(1, f1), (0, f0)], kill_faulty=True))  # recorded: each exited 1
    (here / "two.toml").write_text(TWO_SCENARIOS.format(fault="1:tp/groups_created:raise"))
    code, _, err = memprobe(capsys, "compare", "--device", "cpu", "--scenarios", "two.toml", "--jobs", "2", "--quiet",
                            "--run-id", "two")
    assert code == 3, err
    assert last_line(err) == ("memprobe: error: faulty: rank 1 failed at tp/groups_created: RuntimeError: injected fault at "
                              "tp/groups_created (MEMPROBE_TEST_FAULT); readings kept in memprobe-runs/two/faulty; finished: "
                              "healthy (memprobe report memprobe-runs/two shows them)")
    healthy, faulty = load_run(here / "memprobe-runs" / "two" / "healthy"), load_run(here / "memprobe-runs" / "two" / "faulty")
    assert healthy.record.status == "complete" and healthy.record.failure is None
    assert faulty.record.status == "incomplete" and faulty.record.failure.rank == 1
    assert any(r.rank == 1 and r.group == "tp" and r.step == "before" for r in faulty.readings)  # kept


def test_a_silent_scenario_times_out_alone_and_is_named(here, capsys, monkeypatch):
    f0, f1 = ranks_of("two/faulty")
    silent = [(0, up_to(f0, "arrived", "tp", "groups_created")), (1, up_to(f1, "reading", "tp", "before"))]
    replay(monkeypatch, two_scenario_launch(silent, kill_faulty=False))
    (here / "two.toml").write_text(TWO_SCENARIOS.format(fault="1:tp/groups_created:hang"))
    code, _, err = memprobe(capsys, "compare", "--device", "cpu", "--scenarios", "two.toml", "--jobs", "2", "--quiet",
                            "--run-id", "two", "--timeout", "1")
    assert code == 3, err
    assert "faulty: rank 1 failed: stopped progressing after its tp/before reading: silent for" in err
    assert load_run(here / "memprobe-runs" / "two" / "healthy").record.status == "complete"
    assert load_run(here / "memprobe-runs" / "two" / "faulty").record.status == "incomplete"


def test_a_launch_whose_other_node_never_comes_fails_every_scenario_within_one_timeout(here, capsys, monkeypatch):
    """torchrun waits at the rendezvous for node 1: no launcher ever starts. The scenario waiting for its turn
    fails with the first, instead of waiting a --timeout of its own for the same launcher."""
    monkeypatch.setattr("memprobe.launch.supervisor.KILL_GRACE_S", 0.5)  # torchrun at its rendezvous: nothing to wait for
    replay(monkeypatch, Script().spawn("agent"))
    started = time.monotonic()
    code, _, err = memprobe(capsys, "compare", "--device", "cpu", "--tp", "2", "--ep", "2", "--stacks", "lean", "--jobs", "1",
                            "--quiet", "--nnodes", "2", "--node-rank", "0", "--master-port", str(free_port()),
                            "--timeout", "4", "--run-id", "alone")
    elapsed = time.monotonic() - started
    assert code == 3, err
    assert "torchrun had not started it yet" in err and "has a node not joined?" in err
    second = load_run(here / "memprobe-runs" / "alone" / "tp2-ep2-lean")
    assert second.record.status == "incomplete" and second.record.failure.message.startswith("not run: rank 0 failed")
    assert elapsed < 2 * 4, f"{elapsed:.1f} s: each waiting scenario waited a --timeout of its own"


def test_scenarios_that_cannot_share_a_launch_run_one_after_another_on_several_nodes(here, capsys, monkeypatch):
    """Two launches side by side would share --master-port: on several nodes they run in turn."""
    replay(monkeypatch, healthy_script("one", ranks=(0,)).sleep(0.3), healthy_script("two", ranks=(0,)))
    (here / "two.toml").write_text('[defaults]\ntp = 2\n[[scenario]]\nname = "one"\n'
                                   '[[scenario]]\nname = "two"\nenv = { OMP_NUM_THREADS = "2" }\n')
    code, _, err = memprobe(capsys, "compare", "--device", "cpu", "--scenarios", "two.toml", "--jobs", "2", "--quiet",
                            "--nnodes", "2", "--node-rank", "0", "--master-port", str(free_port()), "--run-id", "two")
    assert code == 0, err
    folder = here / "memprobe-runs" / "two"
    assert sorted(p.name for p in folder.glob("torchrun*.log")) == ["torchrun-1.log", "torchrun-2.log"]
    one, two = (load_run(folder / name) for name in ("one", "two"))
    assert one.record.status == two.record.status == "complete"
    times = [[json.loads(line)["time"] for line in stream_path(folder / name, 0).read_text().splitlines()] for name in ("one", "two")]
    assert max(times[0]) < min(times[1]), "the second launch started before the first ended"


@pytest.mark.parametrize("node", [0, 1])
def test_a_rank_failing_on_node_1_fails_both_nodes(here, capsys, monkeypatch, node):
    """Node 1's rank 1 raises at tp/groups_created; node 0 only sees its rank 0 lose that peer."""
    lines = fixture_lines("raised", node)
    script = Script().spawn(f"rank{node}", *pids_in(lines)).stream("two", node, lines)
    script.log((FIXTURES / "raised" / "torchrun.log").read_text()).exit(1)
    replay(monkeypatch, script)
    code, _, err = memprobe(capsys, "run", "--device", "cpu", "--tp", "2", "--quiet", "--nnodes", "2", "--node-rank", str(node),
                            "--master-port", str(free_port()), "--run-id", "two")
    assert code == 3, err
    if node == 1:
        assert "rank 1 failed at tp/groups_created: RuntimeError: injected fault" in err
    else:
        assert "rank 0 failed at tp/groups_created: RuntimeError: [" in err and "Connection closed by peer" in err
        assert "it lost a peer: the rank that failed first is elsewhere, e.g. on another node" in err
    assert load_run(here / "memprobe-runs" / "two").record.status == "incomplete"


def test_scenarios_that_cannot_share_a_launch_still_run_side_by_side(here, capsys, monkeypatch):
    """OMP_NUM_THREADS is read when torch is imported, before any fork: each scenario gets its own launch, and on
    one node the launches run at the same time, each followed from a thread of its own."""
    replay(monkeypatch, healthy_script("one", pause_s=0.5), healthy_script("two", pause_s=0.5))
    (here / "two.toml").write_text('[defaults]\ntp = 2\n[[scenario]]\nname = "one"\n'
                                   '[[scenario]]\nname = "two"\nenv = { OMP_NUM_THREADS = "2" }\n')
    code, _, err = memprobe(capsys, "compare", "--device", "cpu", "--scenarios", "two.toml", "--jobs", "2", "--quiet",
                            "--run-id", "two")
    assert code == 0, err
    folder = here / "memprobe-runs" / "two"
    assert sorted(p.name for p in folder.glob("launch*.json")) == ["launch-1.json", "launch-2.json"]
    assert sorted(p.name for p in folder.glob("torchrun*.log")) == ["torchrun-1.log", "torchrun-2.log"]
    one, two = load_run(folder / "one"), load_run(folder / "two")
    assert one.record.launch.scenarios == ("one",) and two.record.launch.scenarios == ("two",)
    times = [[json.loads(line)["time"] for line in stream_path(folder / name, 0).read_text().splitlines()] for name in ("one", "two")]
    assert min(times[0]) < max(times[1]) and min(times[1]) < max(times[0]), "the two launches overlap in time"


def test_compare_without_tp_says_which_layout_it_chose(here, capsys, monkeypatch):
    """--device cpu: the largest layout this node supports; the launch itself does not matter here (it fails)."""
    replay(monkeypatch, Script().exit(1))
    code, _, err = memprobe(capsys, "compare", "--device", "cpu", "--stacks", "lean", "--quiet", "--run-id", "chosen")
    assert "no --tp given; comparing the largest layout this node supports: --tp 4 --ep 2" in err
    assert code == 3
    index = json.loads((here / "memprobe-runs" / "chosen" / "comparison.json").read_text())
    assert [s["name"] for s in index["scenarios"]] == ["tp4", "tp4-ep2-lean"], index


# ------------------------------------------------------------------------------ several nodes

def test_torchrun_s_command_line_for_each_kind_of_rendezvous(tmp_path):
    """A static rendezvous at an endpoint assigns no node ranks (each node passes its own); the dynamic one gets
    a rendezvous id per launch; without an endpoint, --master-addr/--master-port (checked for real on two nodes
    in test_multinode_cpu.py)."""
    from memprobe.launch.options import LaunchOptions
    from memprobe.launch.supervisor import launch_command

    def command(**options) -> list[str]:
        return launch_command(tmp_path / "launch.json", "tp2", 1, LaunchOptions(device="cpu", nnodes=2, **options), 29500,
                              "/tmp/logs")

    static = command(node_rank=1, rdzv_endpoint="10.0.0.1:29400", rdzv_backend="static")
    assert static[static.index("--rdzv-backend") + 1] == "static" and static[static.index("--node-rank") + 1] == "1"
    dynamic = command(rdzv_endpoint="10.0.0.1:29400", rdzv_id="job")
    assert dynamic[dynamic.index("--rdzv-id") + 1] == "job-tp2" and "--node-rank" not in dynamic
    fixed = command(node_rank=1, master_port=29511)
    assert fixed[fixed.index("--master-port") + 1] == "29500" and fixed[fixed.index("--node-rank") + 1] == "1"
    assert fixed[-3:] == ["-m", "memprobe.measure.worker", str((tmp_path / "launch.json").resolve())]


def test_a_dynamic_rendezvous_narrows_the_follower_to_the_ranks_that_launched_here(tmp_path):
    """torchrun's c10d rendezvous chose this node for ranks 2-3 of 4: the follower learns it from the first
    launcher's event and waits for those two only."""
    from memprobe.launch.follow import StreamFollower

    healthy = fixture_lines("healthy", 0)
    follower = StreamFollower(tmp_path, range(4), per_node=2)
    for rank in (2, 3):
        stream_path(tmp_path, rank).parent.mkdir(parents=True, exist_ok=True)
        stream_path(tmp_path, rank).write_text("".join(healthy).replace('"rank": 0', f'"rank": {rank}'))
    follower.poll()
    assert sorted(follower.paths) == [2, 3] and follower.finished_locally
    assert follower.results_at == ResultsLocation(host="vm", folder="/tmp/suite-cap/memprobe-runs/healthy")

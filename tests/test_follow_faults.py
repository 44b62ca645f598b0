"""Who is blamed, and for what, on synthetic event streams (no launch): signs of life, a stopped rank, a taken
rendezvous port, a run folder deleted mid-run. The stopped rank is a real stopped process."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from memprobe.launch.follow import StreamFollower, root_cause, silence_failure
from memprobe.launch.processes import is_stopped
from memprobe.model.events import Arrived, Launched, ReadingTaken, Started, WorkerEvent
from memprobe.model.records import Reading, stream_path


def write_events(run_dir: Path, rank: int, *events: WorkerEvent) -> None:
    path = stream_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as stream:
        for event in events:
            stream.write(event.to_json() + "\n")


def follower_of(run_dir: Path, ranks: int) -> StreamFollower:
    follower = StreamFollower(run_dir, range(ranks))
    for rank in follower.last_progress:  # launched long ago
        follower.last_progress[rank] -= 100
    return follower


def reading(group: str, step: str) -> ReadingTaken:
    return ReadingTaken(Reading(rank=0, sequence=0, step=step, group=group, status="ok", primary_bytes=0, process_bytes=0,
                                device_used_bytes=None, torch_reserved_bytes=None, other_gpus_bytes=None, elapsed_s=0.0))


def test_every_sign_of_life_restarts_the_clock_and_a_started_rank_is_never_never_started(tmp_path):
    write_events(tmp_path, 0, Launched(pid=11, rank=0))
    follower = follower_of(tmp_path, 1)
    follower.poll()
    assert silence_failure(follower, time.monotonic(), 10, tmp_path / "w.log", tmp_path / "t.log") is None
    failure = silence_failure(follower, time.monotonic() + 11, 10, tmp_path / "w.log", tmp_path / "t.log")
    assert failure is not None and failure.rank == 0
    assert "never started" not in failure.message
    assert "start-up" in failure.message and "longer than the timeout" in failure.message


def test_a_stopped_rank_is_blamed_not_the_peer_waiting_for_it(tmp_path):
    """Rank 1 stopped (SIGSTOP) inside the barrier of the step after its world reading: both ranks streamed that
    they arrived there, so only the process state tells the stopped one from the one waiting for it."""
    waiting, stopped = (subprocess.Popen(["sleep", "60"]) for _ in range(2))
    try:
        stopped.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not is_stopped(stopped.pid) and time.monotonic() < deadline:  # the kernel stops it asynchronously
            time.sleep(0.01)
        for rank, process in ((0, waiting), (1, stopped)):
            write_events(tmp_path, rank, Started(pid=process.pid, rank=rank), reading("world", "world"),
                         Arrived(group="tp", step="before"))
        follower = follower_of(tmp_path, 2)
        follower.poll()
        follower.last_progress[1] += 0.5  # rank 1 even streamed last
        failure = silence_failure(follower, time.monotonic() + 11, 10, tmp_path / "w.log", tmp_path / "t.log")
        assert failure is not None and failure.rank == 1, failure
        assert f"process {stopped.pid} is stopped" in failure.message and "after its world/world reading" in failure.message
    finally:
        for process in (waiting, stopped):
            process.kill()
            process.wait()


def test_a_taken_rendezvous_port_is_named_not_a_crashed_rank(tmp_path):
    log = tmp_path / "torchrun.log"
    log.write_text("torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
                   "address. port: 29511, useIpv6: 0, code: -98, name: EADDRINUSE, message: address already in use\n")
    follower = StreamFollower(tmp_path, range(2))
    failure = root_cause(follower, 1, tmp_path / "workers.log", log)
    assert "port 29511: it is already in use" in failure.message
    assert "killed or crashed" not in failure.message


def test_a_run_folder_deleted_mid_run_fails_its_scenario_and_is_not_recreated(tmp_path):
    from memprobe.errors import MeasurementError
    from memprobe.launch.assemble import LaunchOutcome, Tracked, assemble
    from memprobe.launch.options import LaunchOptions
    from memprobe.launch.plan import Member
    from memprobe.launch.prepare import new_record
    from memprobe.launch.supervisor import _check
    from memprobe.engines.sglang.layout import SGLangLayout as Layout
    from memprobe.model.scenario import Scenario

    scenario, run_dir = Scenario("tp2", Layout(tp=2)), tmp_path / "gone"
    options = LaunchOptions(device="cpu", out_dir=tmp_path)
    tracked = Tracked(member=Member(scenario, run_dir, {}), record=new_record(scenario, options, run_dir, ["memprobe"]),
                      follower=StreamFollower(run_dir, range(2)), total=1, state="running")
    _check(tracked, time.monotonic(), options, tmp_path / "torchrun.log")
    assert tracked.state == "failed"
    with pytest.raises(MeasurementError, match="was deleted while it ran") as failure:
        assemble(tracked, options, LaunchOutcome(), tmp_path / "torchrun.log")
    assert failure.value.exit_code == 3 and not run_dir.exists()

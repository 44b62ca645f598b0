"""One torchrun launch for every scenario of a comparison, on the real pipeline on CPU.

torchrun starts one launcher per rank, which imports torch once and forks a measuring process per
scenario; each scenario applies its own variables and rendezvouses under keys of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprobe.launch.plan import Member, can_share, plan_launches
from memprobe.launch.prepare import expected_readings
from memprobe.model.comparison import load_comparison
from memprobe.engines.sglang.layout import SGLangLayout as Layout
from memprobe.model.events import load_stream
from memprobe.model.records import LaunchInfo, stream_path
from memprobe.model.run_files import load_run
from memprobe.model.scenario import Scenario
from test_pipeline_cpu import leftover_memprobe_processes, only_run_folder


def events(run_dir: Path, rank: int) -> list[dict]:
    """The rank's stream as the JSON objects on its lines."""
    return [json.loads(event.to_json()) for event in load_stream(stream_path(run_dir, rank))[0]]


SIDE_BY_SIDE = """
[defaults]
tp = 1
[[scenario]]
name = "small-buffers"
env = { NCCL_BUFFSIZE = "1048576" }
[[scenario]]
name = "default-buffers"
"""


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    """ONE real comparison of two one-rank scenarios side by side (--jobs 2) in one launch, through the path a
    launcher that started CUDA takes (MEMPROBE_TEST_BAD_FORK: each scenario execs a fresh interpreter); one rank
    keeps it to three torch imports on a 2-core machine."""
    from conftest import run_memprobe

    folder = tmp_path_factory.mktemp("side-by-side")
    (folder / "two.toml").write_text(SIDE_BY_SIDE)
    result = run_memprobe("compare", "--device", "cpu", "--scenarios", "two.toml", "--jobs", "2", "--quiet",
                          cwd=folder, env={"MEMPROBE_TEST_BAD_FORK": "1"})
    return folder, result


@pytest.mark.e2e
def test_a_comparison_is_one_launch_with_a_process_per_scenario_and_rank(cpu_compare):
    """The session's comparison (tp2, tp2-ep2-full, in turn): one launcher per rank forks both scenarios."""
    tmp_path, result = cpu_compare
    assert result.returncode == 0, result.stderr
    folder = only_run_folder(tmp_path)
    assert sorted(p.name for p in folder.glob("launch*.json")) == ["launch.json"]
    assert sorted(p.name for p in folder.glob("torchrun*.log")) == ["torchrun.log"]
    launch = json.loads((folder / "launch.json").read_text())
    assert [s["name"] for s in launch["scenarios"]] == ["tp2", "tp2-ep2-full"] and launch["jobs"] == 1
    comparison = load_comparison(folder)
    for rank in (0, 1):
        launchers, measuring = set(), []
        for item in comparison.runs:
            assert item.run.record.launch == LaunchInfo(scenarios=("tp2", "tp2-ep2-full"), jobs=1, folder=folder.name)
            stream = events(item.run.path, rank)
            launchers |= {e["pid"] for e in stream if e["type"] == "launched"}
            assert [e["name"] for e in stream if e["type"] == "phase"].count("imported") == 1
            measuring += [e["pid"] for e in stream if e["type"] == "started"]
            assert all(e["process"] == "forked" for e in stream if e["type"] == "started")
            assert (item.run.path / "workers.log").is_file()
        assert len(launchers) == 1, "one launcher (one torch import) per rank serves both scenarios"
        assert len(set(measuring)) == 2 and not launchers & set(measuring), "each scenario in a process of its own"
    for item in comparison.runs:
        assert item.run.record.status == "complete"
        assert item.run.record.timings.phases["queued"] is not None


@pytest.mark.e2e
def test_in_turn_the_next_scenario_starts_after_the_last_one_ended(cpu_compare):
    tmp_path, _ = cpu_compare  # --jobs defaults to 1 on CPU
    first, second = (item.run for item in load_comparison(only_run_folder(tmp_path)).runs)
    first_done = max(e["time"] for rank in (0, 1) for e in events(first.path, rank) if e["type"] == "done")
    second_started = min(e["time"] for rank in (0, 1) for e in events(second.path, rank) if e["type"] == "started")
    assert second_started > first_done
    assert second.record.timings.phases["queued"] > first.record.timings.phases["queued"]


@pytest.mark.e2e
def test_side_by_side_scenarios_run_in_processes_of_their_own(side_by_side):
    tmp_path, result = side_by_side
    assert result.returncode == 0, result.stderr
    folder = only_run_folder(tmp_path)
    comparison = load_comparison(folder)
    assert comparison.names() == ["small-buffers", "default-buffers"]
    assert json.loads((folder / "launch.json").read_text())["jobs"] == 2
    first, second = ({info.pid for info in item.run.record.ranks} for item in comparison.runs)
    assert first and second and not (first & second)
    for item in comparison.runs:
        assert item.run.record.status == "complete"
        assert len(item.run.readings) == expected_readings(item.scenario)
        assert item.run.record.environment["nccl_env"].get("NCCL_BUFFSIZE") == item.scenario.env.get("NCCL_BUFFSIZE")
    assert leftover_memprobe_processes(tmp_path) == []


@pytest.mark.e2e
def test_a_launcher_that_started_cuda_hands_each_scenario_a_fresh_interpreter(side_by_side):
    """A forked child cannot use CUDA once the launcher started it (a sitecustomize importing SGLang does, seen on
    2 x H200): the child then execs a fresh interpreter under the same PID. MEMPROBE_TEST_BAD_FORK takes that path."""
    tmp_path, result = side_by_side
    assert result.returncode == 0, result.stderr
    for item in load_comparison(only_run_folder(tmp_path)).runs:
        assert item.run.record.status == "complete"
        stream = events(item.run.path, 0)
        [started] = [e for e in stream if e["type"] == "started"]
        [launched] = [e for e in stream if e["type"] == "launched"]
        assert started["process"] == "fresh" and started["pid"] != launched["pid"]


# ------------------------------------------------------------------------------ the plan

def _member(name: str, environment: dict[str, str], tp: int = 2) -> Member:
    return Member(scenario=Scenario(name, Layout(tp=tp)), run_dir=Path(name), environment=environment)


def test_scenarios_that_differ_in_what_nccl_reads_share_a_launch_and_keep_their_own_values():
    base = {"PATH": "/bin", "NCCL_CUMEM_ENABLE": "0"}
    first, second = _member("a", dict(base)), _member("b", {**base, "NCCL_CUMEM_ENABLE": "1", "NCCL_BUFFSIZE": "1048576"})
    [launch] = plan_launches([first, second])
    assert launch.environment == {"PATH": "/bin"}
    assert first.overrides == {"NCCL_CUMEM_ENABLE": "0"}
    assert second.overrides == {"NCCL_CUMEM_ENABLE": "1", "NCCL_BUFFSIZE": "1048576"}


@pytest.mark.parametrize("difference", [{"PYTHONPATH": "/sglang-0.5.10"}, {"LD_PRELOAD": "/x.so"}, {"OMP_NUM_THREADS": "4"}])
def test_what_is_read_before_the_fork_gets_a_launch_of_its_own(difference):
    base = {"PATH": "/bin"}
    first, second, third = _member("a", dict(base)), _member("b", {**base, **difference}), _member("c", dict(base))
    assert not can_share(first, second)
    launches = plan_launches([first, second, third])
    assert [launch.scenarios for launch in launches] == [[first.scenario, third.scenario], [second.scenario]]
    assert second.overrides == {} and launches[1].environment == second.environment


def test_another_world_size_gets_a_launch_of_its_own():
    assert not can_share(_member("a", {}), _member("b", {}, tp=4))
    assert len(plan_launches([_member("a", {}), _member("b", {}, tp=4)])) == 2


@pytest.mark.e2e
def test_a_run_of_one_scenario_measures_in_the_launcher_itself(cpu_run):
    """Nothing to share: no fork, so nothing a sitecustomize did to CUDA in the launcher can get in the way
    (the session's run has MEMPROBE_TEST_BAD_FORK set, which a fork would act on)."""
    run = load_run(cpu_run["run_dir"])
    stream = events(run.path, 0)
    [started] = [e for e in stream if e["type"] == "started"]
    [launched] = [e for e in stream if e["type"] == "launched"]
    assert started["process"] == "launcher" and started["pid"] == launched["pid"]
    assert run.record.status == "complete"


# ------------------------------------------------------------------------------ who failed first

def test_a_rank_that_reported_losing_its_peer_is_not_the_cause_even_if_torchrun_saw_it_first(tmp_path):
    """Seen once in CI: rank 1 SIGKILLed itself, rank 0 then lost its gloo peer and exited 1, and torchrun's
    "Root Cause" named rank 0 (both ended within one monitor interval). The killed, silent rank is blamed."""
    from memprobe.launch.follow import StreamFollower, root_cause
    from memprobe.model.events import ErrorReported, ReadingTaken, Started
    from memprobe.model.records import Reading

    def groups_created(rank: int) -> ReadingTaken:
        return ReadingTaken(Reading(rank=rank, sequence=3, step="groups_created", group="tp", status="ok", primary_bytes=0,
                                    process_bytes=0, device_used_bytes=None, torch_reserved_bytes=None,
                                    other_gpus_bytes=None, elapsed_s=0.0))

    run_dir = tmp_path / "run"
    for rank, events_of_rank in {
        0: [Started(pid=100), groups_created(0),
            ErrorReported(rank=0, group="tp", step="pynccl", message="RuntimeError: Connection closed by peer")],
        1: [Started(pid=101), groups_created(1)],
    }.items():
        path = stream_path(run_dir, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(event.to_json() + "\n" for event in events_of_rank))
    log = tmp_path / "torchrun.log"
    log.write_text("Root Cause (first observed failure):\n[0]:\n  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 100)\n")
    follower = StreamFollower(run_dir, range(2))
    follower.poll()
    failure = root_cause(follower, 1, run_dir / "workers.log", log)
    assert failure.rank == 1 and "killed or crashed" in failure.message and "tp/groups_created" in failure.message


@pytest.mark.e2e
def test_a_failed_scenario_does_not_get_the_next_one_killed_by_torchrun(memprobe, tmp_path):
    """In turn: rank 1's launcher ends first while rank 0 still tears the healthy scenario down. A launcher that
    exited non-zero for its failed scenario made torchrun stop rank 0's launcher, healthy scenario and all."""
    (tmp_path / "two.toml").write_text('[defaults]\ntp = 2\n'
                                       '[[scenario]]\nname = "faulty"\nenv = { MEMPROBE_TEST_FAULT = "1:tp/groups_created:raise" }\n'
                                       '[[scenario]]\nname = "healthy"\nenv = { MEMPROBE_TEST_FAULT = "0:/teardown:sleep3" }\n')
    result = memprobe("compare", "--device", "cpu", "--scenarios", "two.toml", "--jobs", "1", "--quiet")
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("memprobe: error: faulty: rank 1 failed at tp/groups_created") and "injected fault" in line
    folder = only_run_folder(tmp_path)
    assert line.endswith(f"; finished: healthy (memprobe report {folder.relative_to(tmp_path)} shows them)")
    assert "RuntimeError: injected fault" in (folder / "faulty" / "workers.log").read_text()  # the traceback
    assert load_run(folder / "healthy").record.status == "complete"
    faulty = load_run(folder / "faulty")
    assert faulty.record.status == "incomplete" and faulty.record.failure.rank == 1
    assert any(r.rank == 1 and r.group == "tp" and r.step == "before" for r in faulty.readings)  # kept
    assert "death signal" not in (folder / "torchrun.log").read_text()
    exited = [e for e in events(folder / "faulty", 1) if e["type"] == "exited"]
    assert [e["code"] for e in exited] == [1]  # the launcher saw its measuring process fail, and said so
    assert leftover_memprobe_processes(tmp_path) == []

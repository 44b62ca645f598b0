"""Run lifecycle on CPU with real torchrun: two torchrun agents on loopback as two nodes,
clean ends (torchrun exits by itself, nothing left in the temp folder), and --nnodes checked before launch.
A failing node and launches in turn across nodes are tested on replayed launches (test_supervisor_replay.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import _memprobe_env
from test_pipeline_cpu import leftover_memprobe_processes

import pytest

from memprobe.launch.processes import free_port
from memprobe.model.timings import PHASES
from memprobe.model.run_files import load_run


def two_nodes(tmp_path: Path, *args: str, env: dict[str, str] | None = None, dynamic: bool = False,
              endpoint_backend: str | None = None, files: dict[str, str] | None = None) -> list[subprocess.CompletedProcess]:
    """The same command on node 0 and node 1 of ``--nnodes 2``, each in its own folder, at the same time;
    ``dynamic``: torchrun's c10d rendezvous (it assigns the node ranks) instead of --master-port;
    ``endpoint_backend``: --rdzv-endpoint with that --rdzv-backend and --node-rank; ``files``: written into
    each node's folder first."""
    port = str(free_port())
    processes = []
    for node in (0, 1):
        rendezvous = (["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job"] if dynamic
                      else ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-backend", endpoint_backend, "--node-rank",
                            str(node)] if endpoint_backend
                      else ["--node-rank", str(node), "--master-port", port])
        folder = tmp_path / f"node{node}"
        (folder / "tmp").mkdir(parents=True)
        for name, text in (files or {}).items():
            (folder / name).write_text(text)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "memprobe", *args, "--device", "cpu", "--quiet", "--nnodes", "2",
             *rendezvous, "--run-id", "two"],
            cwd=folder, env=_memprobe_env({"TMPDIR": str(folder / "tmp"), **(env or {})}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


@pytest.mark.e2e
def test_run_on_two_nodes_completes_on_both(tmp_path):
    """A static rendezvous at an endpoint (torchrun assigns no node ranks: each node passes its own)."""
    node0, node1 = two_nodes(tmp_path, "run", "--tp", "2", endpoint_backend="static")
    assert node0.returncode == 0, node0.stderr
    assert node1.returncode == 0, node1.stderr
    gathered = load_run(tmp_path / "node0" / "memprobe-runs" / "two")
    assert gathered.record.status == "complete" and gathered.ranks == [0, 1]
    assert "rank" in node0.stdout  # node 0 shows the table of every rank
    # node 1 points to node 0's folder and keeps its own rank's stream
    assert f"in {tmp_path / 'node0' / 'memprobe-runs' / 'two'}" in node1.stderr and "ranks 1-1 finished" in node1.stderr
    kept = load_run(tmp_path / "node1" / "memprobe-runs" / "two")
    assert kept.record.status == "complete" and kept.ranks == [1]
    assert kept.record.results_at["folder"] == str(tmp_path / "node0" / "memprobe-runs" / "two")
    assert (tmp_path / "node1" / "memprobe-runs" / "two" / "ranks" / "rank-00001.jsonl").is_file()
    # where the time went: every phase measured, and together they make the wall time
    phases = gathered.record.timings.phases
    assert all(phases[name] is not None and phases[name] >= 0 for name in PHASES if name != "gpu_release")
    assert sum(value for value in phases.values() if value) == pytest.approx(gathered.record.wall_time_s, abs=0.02)
    shown = subprocess.run([sys.executable, "-m", "memprobe", "report", "memprobe-runs/two", "--timings"], cwd=tmp_path / "node0",
                           env=_memprobe_env(), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "timings tp2-lean" in shown.stdout and "workers exit" in shown.stdout
    for node in ("node0", "node1"):
        log = (tmp_path / node / "memprobe-runs" / "two" / "torchrun.log").read_text()
        assert "death signal" not in log  # torchrun exited by itself, not stopped by memprobe
        assert list((tmp_path / node / "tmp").iterdir()) == []  # no torchelastic_* folder left
        assert leftover_memprobe_processes(tmp_path / node) == []


@pytest.mark.e2e
def test_compare_on_two_nodes_with_a_dynamic_rendezvous_completes_on_both(tmp_path):
    """torchrun's c10d rendezvous picks which agent holds rank 0; that node gathers, the other points to it.
    Both scenarios share one launch, side by side, across both nodes (in turn: test_supervisor_replay.py)."""
    jobs = "2"
    results = two_nodes(tmp_path, "compare", "--tp", "2", "--ep", "2", "--stacks", "full", "--jobs", jobs, dynamic=True)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    for node in (0, 1):
        assert load_run(tmp_path / f"node{node}" / "memprobe-runs" / "two" / "tp2").record.launch.jobs == int(jobs)
    for name in ("tp2", "tp2-ep2-full"):  # rank 0 may land on either node
        folders = {node: tmp_path / f"node{node}" / "memprobe-runs" / "two" / name for node in (0, 1)}
        [holder] = [node for node, folder in folders.items()
                    if (folder / "readings.csv").is_file() and load_run(folder).record.results_at is None]
        other = 1 - holder
        assert load_run(folders[holder]).ranks == [0, 1]
        assert f"{name}: this node's ranks" in results[other].stderr
        assert str(folders[holder]) in results[other].stderr


def test_nnodes_that_does_not_divide_the_world_is_refused_before_launch(memprobe, tmp_path):
    result = memprobe("run", "--device", "cpu", "--tp", "3", "--nnodes", "2", "--master-port", "29999")
    assert result.returncode == 2
    assert "world size 3 does not split over --nnodes 2" in result.stderr
    assert not (tmp_path / "memprobe-runs").exists()


def test_nnodes_needs_a_shared_rendezvous_port(memprobe, tmp_path):
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--nnodes", "2")
    assert result.returncode == 2 and "--master-port" in result.stderr
    assert not (tmp_path / "memprobe-runs").exists()


@pytest.mark.e2e
def test_gate_on_two_nodes_judges_on_node_0_and_points_there_from_node_1(memprobe, tmp_path, cpu_compare):
    """The baseline: tp2 of the session's one-node comparison (conftest.py); the gate measures it on two nodes."""
    measured = cpu_compare[0] / "memprobe-runs" / "c"
    made = memprobe("baseline", "update", "--from", str(measured), "-s", "tp2", "--out", "base.json")
    assert made.returncode == 0, made.stderr
    for node in ("node0", "node1"):
        (tmp_path / node).mkdir()
        (tmp_path / node / "base.json").write_text((tmp_path / "base.json").read_text())
    port = str(free_port())
    processes = [subprocess.Popen([sys.executable, "-m", "memprobe", "gate", "--baseline", "base.json", "--device", "cpu",
                                   "--nnodes", "2", "--node-rank", str(node), "--master-port", port],
                                  cwd=tmp_path / f"node{node}", env=_memprobe_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    (out0, err0), (out1, err1) = (process.communicate(timeout=300) for process in processes)
    assert processes[0].returncode == 0, out0 + err0
    assert "PASS" in out0
    assert processes[1].returncode == 0, out1 + err1
    assert "tp2: this node's ranks 1-1 finished" in err1 and str(tmp_path / "node0" / "memprobe-runs") in err1

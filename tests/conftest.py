import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def pytest_sessionstart(session):
    """Byte-compile memprobe once: the suite starts it in hundreds of processes (CLI, torchrun launchers), and
    where PYTHONDONTWRITEBYTECODE is set (this project's machines set it) each would compile every module again.
    Existing bytecode is still read with that variable set; a stale file is recompiled in memory, never wrong."""
    import compileall

    compileall.compile_dir(str(ROOT / "memprobe"), quiet=1)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest-xdist's workers start with COLUMNS=80 and LINES=24 (execnet):
        for size in ("COLUMNS", "LINES"):    # the tables' widths would differ from a run without it
            os.environ.pop(size, None)


LAUNCHING_FIXTURES = ("cpu_compare", "cpu_run", "side_by_side")


def pytest_collection_modifyitems(config, items):
    """A test that reads a shared real launch needs that launch: it is an e2e test like the ones that launch."""
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in LAUNCHING_FIXTURES):
            item.add_marker(pytest.mark.e2e)


def _memprobe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.update(extra or {})
    return env


@pytest.fixture
def memprobe(tmp_path):
    """Run the real CLI (``python -m memprobe``) in a fresh working folder."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 240, cwd: Path | None = None):
        return subprocess.run(
            [sys.executable, "-m", "memprobe", *args],
            cwd=cwd or tmp_path,
            env=_memprobe_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def run_memprobe(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 400):
    return subprocess.run([sys.executable, "-m", "memprobe", *args], cwd=cwd, env=_memprobe_env(env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cpu_compare(tmp_path_factory):
    """ONE real CPU comparison per session (`compare --device cpu --tp 2 --ep 2` with every export), shared by the
    tests that read it, so the suite pays its launch once. Its folder is ``memprobe-runs/c`` under ``folder``;
    tests copy what they change and never write into it."""
    folder = tmp_path_factory.mktemp("cpu-compare")
    result = run_memprobe("compare", "--device", "cpu", "--tp", "2", "--ep", "2", "--quiet", "--run-id", "c",
                          "--csv", "long.csv", "--summary-csv", "summary.csv", "--json", "all.json", "--markdown", "table.md",
                          "--plot", "c.svg", cwd=folder)
    return folder, result


@pytest.fixture(scope="session")
def cpu_run(tmp_path_factory):
    """One real CPU run (--tp 1, the smallest layout), shared by the tests that need real exports, and the
    baseline made from it: launching torchrun costs seconds, and CI's whole suite has a budget.
    MEMPROBE_TEST_BAD_FORK is set: a scenario measured in a fork would exec a fresh interpreter, and one run
    alone must measure in its launcher (test_one_launch_cpu.py)."""
    folder = tmp_path_factory.mktemp("cpu-run")
    command = [sys.executable, "-m", "memprobe", "run", "--device", "cpu", "--tp", "1", "--quiet",
               "--out-dir", str(folder / "runs"), "--run-id", "tp1", "--json", str(folder / "run.json")]
    done = subprocess.run(command, cwd=folder, env=_memprobe_env({"MEMPROBE_TEST_BAD_FORK": "1"}), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    baseline = folder / "baseline.json"
    made = subprocess.run([sys.executable, "-m", "memprobe", "baseline", "update", "--from", str(folder / "runs" / "tp1"),
                           "--out", str(baseline)], cwd=folder, env=_memprobe_env(), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return {"folder": folder, "run_dir": folder / "runs" / "tp1", "baseline": baseline, "json": folder / "run.json",
            "stdout": done.stdout}


@pytest.fixture
def replay_folder(tmp_path, monkeypatch):
    """A fresh working folder for a replayed launch in this process (replay_support.py), with memprobe's temp
    folders under it: at the end, nothing the launch started runs and torchrun's log folder is gone."""
    from replay_support import leftover_processes

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    yield tmp_path
    assert leftover_processes(tmp_path) == [], "every process of the launch is gone at the end"
    assert list((tmp_path / "tmp").iterdir()) == [], "torchrun's log folder was removed"

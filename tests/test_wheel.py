"""The distribution another repository's CI installs: ``python -m build`` makes a wheel named memprobe-llm
whose ``memprobe`` command works from a fresh virtual environment."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

DISTRIBUTION = "memprobe-llm"  # "memprobe" on PyPI is an unrelated project


def build_wheel(into: Path) -> Path:
    """From a copy of what the wheel is made of, so the build leaves nothing in the checkout; without build
    isolation, so it uses this environment's setuptools and downloads nothing."""
    source = into / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "memprobe", source / "memprobe", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(into / "dist"),
                            str(source)], capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (into / "dist").glob("*.whl")
    return wheel


def fresh_venv(folder: Path) -> Path:
    """A venv without pip whose only extra path is this environment's site-packages: memprobe's dependencies
    (torch among them) without downloading them; memprobe itself must come from the wheel."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "dependencies.pth").write_text("\n".join(sorted({sysconfig.get_paths()["purelib"], *site.getsitepackages()})) + "\n")
    return python


@pytest.mark.e2e
def test_the_built_wheel_installs_and_its_command_runs_from_a_fresh_venv(tmp_path):
    pytest.importorskip("build", reason="python -m build needs the dev extra: pip install -e '.[dev]'")
    wheel = build_wheel(tmp_path)
    assert wheel.name.startswith("memprobe_llm-")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        assert f"Name: {DISTRIBUTION}\n" in archive.read(metadata).decode()
    python = fresh_venv(tmp_path / "venv")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                                "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=180)
    assert installed.returncode == 0, installed.stderr
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = str(python.parent) + os.pathsep + env.get("PATH", "")
    where = subprocess.run([str(python), "-c", "import memprobe; print(memprobe.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where  # the wheel's memprobe, not the checkout's
    version = subprocess.run(["memprobe", "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("memprobe "), version.stderr
    plan = subprocess.run(["memprobe", "plan", "--tp", "2", "--ep", "2"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert plan.returncode == 0 and "moe_ep" in plan.stdout, plan.stderr
    estimate = subprocess.run(["memprobe", "estimate", "--tp", "2", "--ep", "2"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)  # the packaged calibration is in the wheel
    assert estimate.returncode == 0 and "ESTIMATED" in estimate.stdout, estimate.stderr

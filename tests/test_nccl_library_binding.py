"""The NCCL a worker records is the one torch's calls bind to: with a preloaded copy beside the one torch's wheel
loads by path, the preloaded copy (first in the global search order), not whichever ``/proc/self/maps`` lists first.

zlib stands in for NCCL (two copies of one shared library under different paths); no GPU is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import ctypes, sys
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)  # as torch loads its wheel's libnccl.so.2
from memprobe.measure.cuda_libs import resolving_library_path
print(resolving_library_path("zlibVersion"))
"""


def _zlib() -> Path:
    for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
        if (path := Path(folder, "libz.so.1")).exists():
            return path
    pytest.skip("no libz.so.1 to copy")


def _bound(wheel_copy: Path, preload: Path | None) -> str:
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    environment.pop("LD_PRELOAD", None)
    if preload is not None:
        environment["LD_PRELOAD"] = str(preload)
    done = subprocess.run([sys.executable, "-c", PROBE, str(wheel_copy)], env=environment, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.strip()


@pytest.fixture
def two_copies(tmp_path: Path) -> tuple[Path, Path]:
    source = _zlib()
    copies = (tmp_path / "wheel" / "libz.so.1", tmp_path / "preloaded" / "libz.so.1")
    for copy in copies:
        copy.parent.mkdir()
        shutil.copy(source, copy)
    return copies


def test_the_copy_loaded_by_path_when_nothing_is_preloaded(two_copies: tuple[Path, Path]) -> None:
    assert _bound(two_copies[0], None) == str(two_copies[0])


def test_a_preloaded_copy_wins_over_the_one_loaded_by_path(two_copies: tuple[Path, Path]) -> None:
    assert _bound(two_copies[0], two_copies[1]) == str(two_copies[1])


def test_no_path_for_a_symbol_nothing_exports() -> None:
    from memprobe.measure.cuda_libs import resolving_library_path

    assert resolving_library_path("memprobe_no_such_symbol") is None

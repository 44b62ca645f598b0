import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


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

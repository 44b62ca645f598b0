"""The installed engine a run imported, as one typed record (memprobe.model.installation): every committed run and
baseline reads back to exactly the JSON it holds, and each engine writes the keys recorded so far."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprobe.gate.baseline import describe_installation
from memprobe.model.installation import EngineInstallation

ROOT = Path(__file__).resolve().parent.parent


def _committed_installations() -> list[tuple[str, str, object]]:
    """(file, engine, value) of every installation recorded under results/ (run.json environment, baselines)."""
    found = []
    for path in sorted((ROOT / "results").rglob("*.json")):
        text = path.read_text(encoding="utf-8")
        if "parallel_state_sha256" not in text:
            continue
        document = json.loads(text)
        if "environment" in document:
            for engine in ("sglang", "vllm"):
                if document["environment"].get(engine):
                    found.append((str(path.relative_to(ROOT)), engine, document["environment"][engine]))
        for name, scenario in (document.get("scenarios") or {}).items():
            for engine, value in (scenario.get("measured_with") or {}).items():
                found.append((f"{path.relative_to(ROOT)}:{name}", engine, value))
    return found


COMMITTED = _committed_installations()


def test_committed_installations_are_found() -> None:
    assert len(COMMITTED) >= 10, COMMITTED  # 17 files under results/ held one when this test was written


@pytest.mark.parametrize("where,engine,value", COMMITTED, ids=[item[0] for item in COMMITTED])
def test_every_committed_installation_reads_back_to_its_json(where: str, engine: str, value: object) -> None:
    installation = EngineInstallation.from_json(engine, value)
    assert installation is not None and installation.engine == engine
    assert installation.to_json() == value


def test_sglang_writes_its_five_keys_and_vllm_three() -> None:
    sglang = EngineInstallation("sglang", "0.5.11", "/s/sglang", "ab" * 32, api="kwargs", custom_allreduce_default="v1")
    assert list(sglang.to_json()) == ["version", "path", "parallel_state_sha256", "api", "custom_allreduce_default"]
    vllm = EngineInstallation("vllm", "0.33.0", "/v/vllm", "cd" * 32, site="/v")
    assert vllm.to_json() == {"version": "0.33.0", "path": "/v/vllm", "parallel_state_sha256": "cd" * 32}
    assert EngineInstallation.from_json("vllm", vllm.to_json(), site="/v") == vllm


def test_an_older_run_s_version_string_and_none() -> None:
    older = EngineInstallation.from_json("sglang", "0.5.11")
    assert older is not None and older.version == "0.5.11" and older.path == ""
    assert EngineInstallation.from_json("sglang", None) is None
    assert describe_installation("0.5.11") == "0.5.11"
    assert describe_installation({"version": "0.5.11", "path": "/s", "parallel_state_sha256": "0123456789abcdef"}) == \
        "0.5.11 (/s, parallel_state sha256 0123456789ab)"
    assert describe_installation(None) == "none (reference engine)"


def test_an_installed_engine_s_estimate_refuses_a_stack_it_would_drop():
    """--engine vllm / sglang estimate what the engine's code asks for: a --stacks given with them is refused in one
    line, not silently replaced by the installed engine's own decisions."""
    from memprobe import api
    from memprobe.errors import UsageError

    for engine, stacks in (("vllm", "shared-ep"), ("sglang", "full")):
        with pytest.raises(UsageError, match=f"--stacks {stacks} is for the reproduction"):
            api.estimate(engine=engine, tp=2, moe=True if engine == "vllm" else False, stacks=stacks)

"""A baseline of an installed engine's run keeps what identifies the installation on any machine, not the folder
it lay in on the machine that measured it; baselines written before (absolute site paths) are read as they are."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from support import headline_scenarios, synthetic_run  # noqa: E402

from memprobe.gate.baseline import baseline_text, build_baseline, describe_installation, load_baseline  # noqa: E402
from memprobe.model.comparison import Comparison, ScenarioRun  # noqa: E402
from memprobe.model.records import Run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SITE = "/home/someone/sgl-0.5.11"
INSTALLATION = {"version": "0.5.11", "path": f"{SITE}/sglang", "parallel_state_sha256": "6b2232effdd1" + "0" * 52,
                "api": "kwargs", "custom_allreduce_default": "v1"}


def _installed_comparison() -> tuple[Comparison, str]:
    scenario = replace(headline_scenarios().scenarios[1], name="tp4-ep2.sglang", engine="sglang", sglang=SITE)
    run = synthetic_run(scenario)
    record = replace(run.record, environment={**run.record.environment, "sglang": INSTALLATION})
    return Comparison("c", scenario.name, [ScenarioRun(scenario, Run(record=record, readings=run.readings))]), \
        scenario.definition_hash()


def test_a_baseline_of_an_installed_engine_names_no_folder_of_the_machine_that_measured_it(tmp_path):
    comparison, definition_hash = _installed_comparison()
    document = build_baseline(comparison)
    assert SITE not in baseline_text(document)
    entry = document["scenarios"]["tp4-ep2.sglang"]
    assert entry["definition_hash"] == definition_hash  # the site never entered the hash
    assert entry["measured_with"]["sglang"] == {key: INSTALLATION[key] for key in INSTALLATION if key != "path"}
    path = tmp_path / "b.json"
    path.write_text(baseline_text(document))
    stored = load_baseline(path).scenarios["tp4-ep2.sglang"]
    assert stored.scenario().engine == "sglang" and stored.scenario().definition_hash() == definition_hash


def test_a_baseline_written_with_an_absolute_site_is_still_read():
    old = ROOT / "results" / "cpu-sglang-estimate-gate-20261201" / "b-0.5.11.json"
    assert json.loads(old.read_text())["scenarios"]["tp4-ep2.sglang"]["definition"]["sglang"] == "/work/sgl-0.5.11"
    stored = load_baseline(old).scenarios["tp4-ep2.sglang"]
    assert stored.scenario().definition_hash() == stored.definition_hash
    old_measured = ROOT / "results" / "h200x2-issue16-20261128" / "sglang" / "baseline-0.5.11.json"
    installation = next(iter(load_baseline(old_measured).scenarios.values())).measured_with["sglang"]
    assert describe_installation(installation).startswith("0.5.11 (/tmp/sgl-0.5.11/sglang, parallel_state sha256")

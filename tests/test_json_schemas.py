"""Every JSON memprobe writes has a schema_version and a JSON Schema in docs/schema/; real exports of the CPU
pipeline validate against them."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import ROOT

jsonschema = pytest.importorskip("jsonschema", reason="the dev extra installs jsonschema: pip install -e '.[dev]'")
SCHEMAS = ROOT / "docs" / "schema"


def validator(name: str):
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(name: str, document: dict) -> list[str]:
    return [f"{'/'.join(map(str, error.path))}: {error.message}" for error in validator(name).iter_errors(document)]


def test_every_schema_is_valid_and_requires_its_schema_version():
    names = sorted(path.name.removesuffix(".schema.json") for path in SCHEMAS.glob("*.schema.json"))
    assert names == ["baseline", "comparison", "gate-result", "plan"]
    versions = {"comparison": {"enum": [1, 2]}}  # the comparison export: schema 2, and 1 with --json-schema 1
    for name in names:
        schema = validator(name).schema
        assert "schema_version" in schema["required"]
        assert schema["properties"]["schema_version"] == versions.get(name, {"const": 1})


def test_run_json_is_what_report_writes_and_follows_the_comparison_schema(cpu_run, memprobe, tmp_path):
    written = cpu_run["json"].read_text()
    again = memprobe("report", str(cpu_run["run_dir"]), "--json", "report.json")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "report.json").read_text() == written
    document = json.loads(written)
    assert problems("comparison", document) == []
    assert document["scenarios"][0]["run"]["environment"]["sampling_mode"] == "host_rss_anon"
    broken = copy.deepcopy(document)  # the schema can fail: a byte count that is not an integer
    broken["scenarios"][0]["classes"][0]["readings"][0]["primary_bytes"] = "512 MiB"
    del broken["schema_version"]
    assert len(problems("comparison", broken)) == 2


@pytest.mark.parametrize("schema", [1, 2])
def test_an_estimate_s_export_follows_the_comparison_schema_with_its_marker(schema, tmp_path):
    from memprobe import api
    from memprobe.reports import write_json

    write_json(api.estimate(tp=4, ep=2, nccl="2.30.7"), tmp_path / "e.json", schema=schema)
    document = json.loads((tmp_path / "e.json").read_text())
    assert problems("comparison", document) == [] and document["estimate"]["rules_nccl"] == "2.30.7"
    document["estimate"]["rules_nccl"] = 2.3  # the schema can fail: a version that is not text
    assert len(problems("comparison", document)) == 1


def test_run_json_refuses_a_path_that_is_not_json_before_launching(memprobe, tmp_path):
    result = memprobe("run", "--device", "cpu", "--tp", "1", "--json", "run.txt")
    assert result.returncode == 2
    assert result.stderr.strip() == "memprobe: error: --json run.txt: must end in .json"
    assert list(tmp_path.iterdir()) == []


def test_the_gate_verdict_and_the_baseline_follow_their_schemas(cpu_run, memprobe, tmp_path):
    baseline = json.loads(cpu_run["baseline"].read_text())
    assert problems("baseline", baseline) == []
    passed = memprobe("gate", "--baseline", str(cpu_run["baseline"]), "--results", str(cpu_run["run_dir"]), "--json", "pass.json")
    failed = memprobe("gate", "--baseline", str(cpu_run["baseline"]), "--results", str(cpu_run["run_dir"]), "--json", "fail.json",
                      "--threshold", "metric=total_after_first_use,max=1MiB")
    assert (passed.returncode, failed.returncode) == (0, 1), passed.stderr + failed.stderr
    for name in ("pass.json", "fail.json"):
        document = json.loads((tmp_path / name).read_text())
        assert problems("gate-result", document) == []
    assert json.loads((tmp_path / "fail.json").read_text())["findings"]  # the breach is validated too


def test_plan_json_follows_the_plan_schema(memprobe):
    result = memprobe("plan", "--tp", "4", "--ep", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert problems("plan", json.loads(result.stdout)) == []

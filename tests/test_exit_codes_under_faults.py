"""Exit codes keep their meaning whatever goes wrong: an unexpected error is 70 (never the gate's 1), a closed pipe
141, a full stdout 2, a signal 129/143 for every command; no command writes over what it reads; baseline writes are
serialised and keep mode and link; exports escape what spreadsheets and Markdown would run; damaged baselines,
calibrations, run folders and NCCL variables are one line and exit 2. Most cases run the CLI in this process
(``memprobe.cli.main``); the stream cases need a real process. docs/reliability.md lists them."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, _memprobe_env
from memprobe.cli import main
from memprobe.errors import ExitCode, Interrupted, UsageError

ESTIMATED_BASELINE = ROOT / "configs" / "baselines" / "estimated-h200x8-tp8-ep4-lean.json"
MEASURED_BASELINE = ROOT / "configs" / "baselines" / "h200x4-tp4-ep2-lean.json"
COMPARISON = ROOT / "results" / "h200x4-20261127" / "compare-tp4-ep2"
MEASURED_RESULTS = COMPARISON / "tp4-ep2-lean"
CALIBRATION = ROOT / "memprobe" / "estimate" / "calibrations" / "nvidia-h200.json"


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if line]
    assert "Traceback" not in captured.err, captured.err
    assert len(lines) == 1 and lines[0].startswith("memprobe") and ": error: " in lines[0], captured.err
    return lines[0]


def _memprobe(*args: str, cwd: Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memprobe", *args], cwd=cwd, env=_memprobe_env(env), capture_output=True,
                          text=True, timeout=120, **kwargs)


# --------------------------------------------------------------------------- the process's own failures


def test_an_unexpected_error_exits_70_with_one_line_and_its_traceback_in_a_temp_file(tmp_path, monkeypatch, capsys):
    from memprobe import api

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(api, "judge", broken)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main(["gate", "--baseline", str(MEASURED_BASELINE), "--results", str(MEASURED_RESULTS)]) == 70
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error" in err[0] and "ZeroDivisionError: a bug" in err[0], err
    [details] = list((tmp_path / "tmp").iterdir())
    assert str(details) in err[0] and "Traceback" in details.read_text() and "raise ZeroDivisionError" in details.read_text()
    assert list((tmp_path / "work").iterdir()) == [], "nothing written into the user's folder"


def test_a_closed_pipe_ends_quietly_with_141_never_the_gates_1(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| true`: the reader is gone before memprobe writes
    try:
        done = subprocess.run([sys.executable, "-m", "memprobe", "gate", "--baseline", str(MEASURED_BASELINE), "--results",
                               str(MEASURED_RESULTS)], cwd=tmp_path, env=_memprobe_env(), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == ExitCode.PIPE_CLOSED == 141
    assert done.stderr == ""


def test_a_full_standard_output_is_one_line_and_exit_2(tmp_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "memprobe", "plan", "--tp", "8", "--ep", "4"], cwd=tmp_path,
                              env=_memprobe_env(), stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["memprobe: error: cannot write standard output: No space left on device"]


def test_a_stream_that_cannot_encode_gets_ascii_stand_ins(tmp_path):
    done = _memprobe("estimate", "--tp", "8", "--ep", "4", cwd=tmp_path, env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    assert "\nd = worst rank minus" in done.stdout and "\n-----" in done.stdout  # "Δ = worst rank ...", the "─" rule
    done.stdout.encode("ascii")


@pytest.mark.parametrize("number, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
@pytest.mark.parametrize("command, function", [
    (["estimate", "--tp", "2"], "estimate"),
    (["report", str(COMPARISON)], "load"),
    (["plan", "--tp", "2"], "plan"),
])
def test_every_command_exits_as_the_signal_says(monkeypatch, capsys, command, function, number, code):
    from memprobe import api

    def signalled(*args, **kwargs):
        raise KeyboardInterrupt(number)  # what memprobe's handler raises for the signal (launch/interrupts.py)

    monkeypatch.setattr(api, function, signalled)
    assert main(command) == code
    assert capsys.readouterr().err.strip() == f"memprobe: interrupted by {signal.Signals(number).name}"


def test_a_step_summary_that_is_not_utf8_or_a_folder_never_fails_a_pass(tmp_path, monkeypatch, capsys):
    summary = tmp_path / "summary.md"
    summary.write_bytes(b"\xff")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["gate", "--baseline", str(MEASURED_BASELINE), "--results", str(MEASURED_RESULTS)]) == 0
    assert summary.read_bytes().startswith(b"\xff\n\n### ") and b"pass" in summary.read_bytes()
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))
    assert main(["estimate", "--tp", "4", "--ep", "2", "--markdown", str(tmp_path / "e.md")]) == 2
    assert "$GITHUB_STEP_SUMMARY" in _error_line(capsys)


# --------------------------------------------------------------------------- evidence never overwritten


@pytest.mark.parametrize("option, target", [("--json", "comparison.json"), ("--csv", "tp4/readings.csv"),
                                            ("--markdown", "new.md")])
def test_report_never_writes_into_the_folder_it_reports_on(tmp_path, capsys, option, target):
    folder = tmp_path / "compare"
    shutil.copytree(COMPARISON, folder)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert main(["report", str(folder), option, str(folder / target)]) == 2
    assert "which this command reads" in _error_line(capsys)
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_a_baseline_update_never_writes_into_the_run_it_takes_its_numbers_from(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(MEASURED_RESULTS, run)
    before = (run / "run.json").read_bytes()
    assert main(["baseline", "update", "--from", str(run), "--out", str(run / "run.json")]) == 2
    assert "which this command reads" in _error_line(capsys)
    assert (run / "run.json").read_bytes() == before


def test_two_baseline_updates_at_once_lose_no_scenario(tmp_path):
    from memprobe import api

    out = tmp_path / "b.json"
    scenarios = ROOT / "configs" / "scenarios" / "moe-stacks.toml"
    for _ in range(2):
        out.unlink(missing_ok=True)
        start = threading.Barrier(2)
        errors = []

        def update(name: str) -> None:
            start.wait()
            try:
                api.make_baseline(out=out, scenarios_file=scenarios, scenarios=(name,), estimate=True)
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=update, args=(name,)) for name in ("tp4", "tp4-ep2-lean")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(json.loads(out.read_text())["scenarios"]) == ["tp4", "tp4-ep2-lean"]


def test_a_baseline_update_keeps_the_files_mode_and_writes_through_a_symlink(tmp_path):
    from memprobe import api

    scenarios = ROOT / "configs" / "scenarios" / "moe-stacks.toml"
    target = tmp_path / "real.json"
    api.make_baseline(out=target, scenarios_file=scenarios, scenarios=("tp4",), estimate=True)
    os.chmod(target, 0o444)
    link = tmp_path / "link.json"
    link.symlink_to(target.name)
    update = api.make_baseline(out=link, scenarios_file=scenarios, scenarios=("tp4-ep2-lean",), estimate=True)
    assert update.changed
    assert link.is_symlink() and os.readlink(link) == "real.json"
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert sorted(json.loads(target.read_text())["scenarios"]) == ["tp4", "tp4-ep2-lean"]


# --------------------------------------------------------------------------- exports


def test_csv_cells_a_spreadsheet_would_run_are_made_inert(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "=cmd|' -C calc'!A0"
    folder.mkdir()
    (folder / "s.toml").write_text('name = "s"\nbase = "lean"\n')
    stack = f"{folder.name}/s.toml"
    assert main(["estimate", "--tp", "2", "--ep", "2", "--stacks", stack, "--csv", "long.csv", "--summary-csv", "s.csv"]) == 0
    for name in ("long.csv", "s.csv"):
        cells = [cell for line in (tmp_path / name).read_text().splitlines() for cell in line.split(",")]
        assert f"'{stack}".split(",")[0] in cells
        assert not any(cell.startswith(("=", "+", "@")) for cell in cells)


def test_a_line_break_in_a_stack_path_neither_breaks_the_table_nor_injects_a_heading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "st\n# Injected"
    folder.mkdir()
    (folder / "s.toml").write_text('name = "s"\nbase = "lean"\n')
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["estimate", "--tp", "2", "--ep", "2", "--stacks", f"{folder.name}/s.toml", "--markdown", "t.md"]) == 0
    for text in ((tmp_path / "t.md").read_text(), summary.read_text()):
        assert not any(line.lstrip().startswith("# Injected") for line in text.splitlines())
        table = [line for line in text.splitlines() if line.startswith("| tp2-ep2-s ")]
        assert len(table) == 1 and "st # Injected/s.toml" in table[0]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_elapsed_s_is_damaged_input_never_nan_in_json(tmp_path, capsys, value):
    run = tmp_path / "run"
    shutil.copytree(MEASURED_RESULTS, run)
    readings = (run / "readings.csv").read_text().splitlines()
    header = readings[0].split(",")
    cells = readings[1].split(",")
    cells[header.index("elapsed_s")] = value
    (run / "readings.csv").write_text("\n".join([readings[0], ",".join(cells), *readings[2:]]) + "\n")
    assert main(["report", str(run), "--json", str(tmp_path / "out.json")]) == 2
    assert "elapsed_s must be a finite number" in _error_line(capsys)
    assert not (tmp_path / "out.json").exists()


# --------------------------------------------------------------------------- damaged inputs, one line each


def _damaged_baseline(tmp_path: Path, change) -> Path:
    document = json.loads(ESTIMATED_BASELINE.read_text())
    change(next(iter(document["scenarios"].values())))
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda s: s["environment_key"].__setitem__("gpu_count", "x"), "environment_key.gpu_count must be a whole number"),
    (lambda s: s["environment_key"].__setitem__("gpu_count", 0), "environment_key.gpu_count must be a whole number from 1"),
    (lambda s: s["environment_key"].__setitem__("gpu_count", 16), "environment_key.gpu_count must be a whole number from 1 to 8"),
    (lambda s: s["environment_key"].__setitem__("nnodes", 0), "environment_key.nnodes must be a whole number from 1"),
    (lambda s: s["ranks"]["0"].__setitem__("cuda_context", 10**400), "a number of 401 digits"),
])
def test_a_damaged_estimated_baseline_is_one_line_exit_2(tmp_path, capsys, change, message):
    baseline = _damaged_baseline(tmp_path, change)
    assert main(["gate", "--estimate", "--baseline", str(baseline)]) == 2
    line = _error_line(capsys)
    assert message in line and str(baseline) in line and "--gpus-per-node" not in line


@pytest.mark.parametrize("variable, value, read", [
    ("NCCL_LL_BUFFSIZE", "-99999999", "-99,999,999 bytes"),
    ("NCCL_BUFFSIZE", "-4194304", "-4,194,304 bytes"),
    ("NCCL_BUFFSIZE", "1_048_576", "reads it as 1 bytes"),  # strtoll stops at the underscore
    ("NCCL_BUFFSIZE", "4294967296", "kept in a C int as 0"),
    ("NCCL_BUFFSIZE", "9" * 30, "past int64"),
    ("NCCL_LL128_BUFFSIZE", "abc", "reads it as 0 bytes"),
])
def test_nccl_sizes_nccl_cannot_run_with_are_refused_as_it_would_read_them(variable, value, read):
    from memprobe.estimate.nccl import NcclSettings

    with pytest.raises(UsageError) as refused:
        NcclSettings.from_env({variable: value})
    assert read in str(refused.value)


def test_nccl_variables_are_read_as_nccl_2_28_9_reads_them():
    from memprobe.estimate.nccl import MAXCHANNELS, NcclSettings

    default = NcclSettings.from_env({})
    assert NcclSettings.from_env({"NCCL_BUFFSIZE": "0x100000"}).buffsizes[2] == 1 << 20  # base 0: hex
    assert NcclSettings.from_env({"NCCL_BUFFSIZE": "010000000"}).buffsizes[2] == 0o10000000  # and octal
    assert NcclSettings.from_env({"NCCL_BUFFSIZE": "  +2097152MiB"}).buffsizes[2] == 2097152  # the tail ignored
    assert NcclSettings.from_env({"NCCL_BUFFSIZE": "-2"}) == default  # NCCL's own "unset" (init.cc:700, 713)
    for value in ("0", "-3", "4294967296"):  # <= 0 as a C int: NCCL leaves the default (init.cc:1672-1676)
        assert NcclSettings.from_env({"NCCL_MAX_CTAS": value}).max_ctas == default.max_ctas == MAXCHANNELS
        assert NcclSettings.from_env({"NCCL_MIN_CTAS": value}).min_ctas == default.min_ctas
    assert NcclSettings.from_env({"NCCL_MAX_CTAS": "4"}).max_ctas == 4
    assert NcclSettings.from_env({"NCCL_MAX_CTAS": "4000"}).max_ctas == MAXCHANNELS  # capped (init.cc:1760-1767)
    assert NcclSettings.from_env({"NCCL_MAX_NCHANNELS": "0"}).max_ctas == 1  # connect.cc:350-353: at least one
    assert NcclSettings.from_env({"NCCL_MAX_NRINGS": "2", "NCCL_MAX_NCHANNELS": "4"}).max_ctas == 4  # NCHANNELS wins


def test_the_estimate_reads_nccl_max_ctas_0_as_nccl_does():
    from memprobe import api
    from memprobe.analysis.attribution import components_by_rank

    def bytes_of(env: tuple[str, ...]) -> list[dict]:
        return [components_by_rank(item.run) for item in api.estimate(tp=8, ep=4, env=env, progress=False).runs]

    assert bytes_of(("NCCL_MAX_CTAS=0",)) == bytes_of(())  # ignored by NCCL (init.cc:1674-1675), not one channel
    assert bytes_of(("NCCL_MAX_CTAS=1",)) != bytes_of(())


def _damaged_calibration(tmp_path: Path, change) -> Path:
    document = json.loads(CALIBRATION.read_text())
    change(document)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda d: d.__setitem__("compute_capability", "ninety"), "compute_capability must be a whole number"),
    (lambda d: d.__setitem__("nvlinks_per_gpu", None), "nvlinks_per_gpu must be a whole number"),
    (lambda d: d.__setitem__("nvlinks_per_gpu", "18"), "nvlinks_per_gpu must be a whole number"),
    (lambda d: d.__setitem__("nvlinks_per_gpu", 0), "nvlinks_per_gpu must be a whole number from 1"),
    (lambda d: d["points"][0].__setitem__("cuda_context_bytes", True), "points[0].cuda_context_bytes must be"),
    (lambda d: d.__setitem__("gpu_model", "NVIDIA H200\n# x"), "gpu_model must be one line"),
])
def test_a_damaged_calibration_is_one_line_exit_2(tmp_path, capsys, change, message):
    path = _damaged_calibration(tmp_path, change)
    assert main(["estimate", "--tp", "2", "--calibration", str(path)]) == 2
    assert message in _error_line(capsys)


@pytest.mark.parametrize("name, command", [("calibration.json", ["estimate", "--tp", "2", "--calibration"]),
                                           ("baseline.json", ["gate", "--estimate", "--baseline"])])
def test_json_nested_too_deeply_is_one_line_exit_2(tmp_path, capsys, name, command):
    path = tmp_path / name  # by hand: json.dumps would recurse as deep itself
    path.write_text('{"kind": "memprobe-calibration", "schema_version": 1, "extra": ' + "[" * 100000 + "]" * 100000 + "}")
    assert main([*command, str(path)]) == 2
    assert "nested too deeply" in _error_line(capsys)


@pytest.mark.parametrize("args, message", [
    (["estimate", "--tp", "8", "--baseline-tp", "0"], "--baseline-tp must be a whole number >= 1, got 0"),
    (["estimate", "--tp", "8", "--baseline-tp", "-4"], "--baseline-tp must be a whole number >= 1, got -4"),
    (["estimate", "--tp", "16", "--nnodes", "1"], "world size 16 on --nnodes 1 needs 16 GPUs per node"),
    (["gate", "--baseline", str(MEASURED_BASELINE), "--results", str(MEASURED_RESULTS), "--relative", "nan"],
     "must be a finite number >= 0"),
    (["gate", "--baseline", str(MEASURED_BASELINE), "--results", str(MEASURED_RESULTS), "--relative", "1e400"],
     "must be a finite number >= 0"),
    (["gate", "--estimate", "--device", "cpu", "--baseline", str(ESTIMATED_BASELINE)],
     "--estimate estimates GPU memory; --device cpu"),
    (["estimate", "--tp", "2", "--timeout", "0"], "--timeout must be a positive number"),
])
def test_an_option_is_blamed_by_its_own_name(capsys, args, message):
    assert main(args) == 2
    line = _error_line(capsys)
    assert message in line and ("--gpus-per-node" not in line)


# --------------------------------------------------------------------------- the learning run of real SGLang


def test_the_run_that_learns_sglangs_flags_gets_the_timeout_and_names_no_deleted_folder(tmp_path, monkeypatch, capsys):
    seen = []

    def interrupted(scenario_set, options):
        seen.append(options.timeout_s)
        raise Interrupted(signal.SIGINT, run_dir=str(options.out_dir / "run"))

    monkeypatch.setattr("memprobe.api.planning.measure", interrupted)  # the learning run's launch
    for where in ("memprobe.engines.sglang.install.check_site", "memprobe.engines.sglang.check_site"):  # any site will do
        monkeypatch.setattr(where, lambda site, *args: str(site))
    monkeypatch.setenv("MEMPROBE_TIMEOUT", "7")
    assert main(["estimate", "--tp", "2", "--engine", "sglang", "--sglang", str(tmp_path)]) == 130
    assert seen == [7.0]
    err = capsys.readouterr().err
    assert "interrupted by SIGINT" in err and "readings kept" not in err and "memprobe-estimate-" not in err
    gate = ["gate", "--estimate", "--baseline", str(_sglang_baseline(tmp_path)), "--timeout", "9"]
    assert main(gate) == 130 and seen == [7.0, 9.0]


def _sglang_baseline(tmp_path: Path) -> Path:
    """The estimated baseline's scenario recorded on the installed SGLang (its definition, and so its hash, with it)."""
    from memprobe.gate.baseline import scenario_from_definition
    from memprobe import engines

    document = json.loads(ESTIMATED_BASELINE.read_text())
    [(name, scenario)] = document["scenarios"].items()
    rebuilt = scenario_from_definition(scenario["definition"], name)
    from dataclasses import replace

    on_sglang = replace(rebuilt, engine="sglang", stack="installed", resolved_stack=engines.engine("sglang").resolve_stack("installed"),
                        sglang=str(tmp_path))
    scenario["definition"], scenario["definition_hash"] = on_sglang.definition(), on_sglang.definition_hash()
    path = tmp_path / "sglang-baseline.json"
    path.write_text(json.dumps(document))
    return path


# --------------------------------------------------------------------------- --check and mixed kinds


def test_check_skips_a_foreign_run_json_and_bounds_its_search(tmp_path, capsys):
    (tmp_path / "other-tool").mkdir()
    (tmp_path / "other-tool" / "run.json").write_text('{"foo": 1}')
    shutil.copytree(COMPARISON / "tp4", tmp_path / "mine" / "tp4")
    assert main(["estimate", "--check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "other-tool" in out and "not a memprobe run it can read" in out
    from memprobe.estimate import check

    deep = tmp_path / "wide"
    for index in range(check.MAX_SEARCHED_FOLDERS + 1):
        (deep / f"d{index}").mkdir(parents=True)
    assert main(["estimate", "--check", str(deep)]) == 2
    assert f"more than {check.MAX_SEARCHED_FOLDERS} folders" in _error_line(capsys)


def test_report_refuses_gpu_and_cpu_runs_side_by_side_with_exit_4(cpu_run, capsys):
    assert main(["report", str(MEASURED_RESULTS), str(cpu_run["run_dir"])]) == 4
    assert "different kinds of memory" in _error_line(capsys)


# --------------------------------------------------------------------------- the committed results


def test_report_json_of_old_and_fidelity_folders_follows_the_comparison_schema(tmp_path, capsys):
    import jsonschema

    schema = json.loads((ROOT / "docs" / "schema" / "comparison.schema.json").read_text())
    for folder in ("results/h200x2-20261128/issue13_16/tp2/node0/two-full",  # run.json without a definition
                   "results/sglang-fidelity-20261127/x2/compare-tp2-ep2-engines"):  # fidelity: one entry per pair
        out = tmp_path / f"{Path(folder).name}.json"
        assert main(["report", str(ROOT / folder), "--json", str(out)]) == 0, capsys.readouterr().err
        jsonschema.validate(json.loads(out.read_text()), schema)


# --------------------------------------------------------------------------- seeded damage


def _mutate_json(value, rng, hostile):
    """``value`` with one node replaced by a hostile value: a random descent (stopping at each level with some
    chance), so that every depth is hit, not mostly the many leaves of the ranks' bytes."""
    copied = copy.deepcopy(value)
    node, path = copied, []
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys:
            break
        key = rng.choice(keys)
        path.append(key)
        child = node[key]
        if not isinstance(child, (dict, list)) or not child or rng.random() < 0.3:
            node[key] = rng.choice(hostile)
            return copied, tuple(path)
        node = child
    return copied, tuple(path)


def _mutate_bytes(data: bytes, rng) -> tuple[bytes, str]:
    how = rng.choice(["truncate", "invalid-utf8", "drop-line", "nul"])
    at = rng.randrange(1, max(2, len(data) - 1))
    if how == "truncate":
        return data[:at], how
    if how == "invalid-utf8":
        return data[:at] + b"\xff\xfe" + data[at:], how
    if how == "nul":
        return data[:at] + b"\x00" + data[at + 1:], how
    lines = data.split(b"\n")
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines), how


HOSTILE = [None, "x", "", -(2**70), 2**70, True, [], {}, 1.5, "ü\n# heading", [[[]]], "nan"]
SEED = 20261203
CASES_PER_KIND = 12


def test_seeded_damage_is_one_line_and_exit_2_or_3_never_a_traceback_nor_1(tmp_path, capsys):
    """Baselines, calibrations, run folders and NCCL variables damaged at random (types, ranges, encodings,
    truncation): any outcome but a traceback, exit 1 (the gate's regression) or 70 (a bug); a refusal is one line."""
    import random

    rng = random.Random(SEED)
    estimated = json.loads(ESTIMATED_BASELINE.read_text())
    measured = json.loads(MEASURED_BASELINE.read_text())
    calibration = json.loads(CALIBRATION.read_text())
    cases = []
    for index in range(CASES_PER_KIND):
        folder = tmp_path / f"case{index}"
        folder.mkdir()
        baseline = folder / "baseline.json"
        if rng.random() < 0.5:
            document, where = _mutate_json(measured, rng, HOSTILE)
            baseline.write_text(json.dumps(document))
        else:
            data, where = _mutate_bytes(MEASURED_BASELINE.read_bytes(), rng)
            baseline.write_bytes(data)
        cases.append((f"baseline {where}", ["gate", "--baseline", str(baseline), "--results", str(MEASURED_RESULTS)]))
        estimated_baseline = folder / "estimated.json"
        document, where = _mutate_json(estimated, rng, HOSTILE)
        estimated_baseline.write_text(json.dumps(document))
        cases.append((f"estimated baseline {where}", ["gate", "--estimate", "--baseline", str(estimated_baseline)]))
        damaged = folder / "calibration.json"
        if rng.random() < 0.7:
            document, where = _mutate_json(calibration, rng, HOSTILE)
            damaged.write_text(json.dumps(document))
        else:
            data, where = _mutate_bytes(CALIBRATION.read_bytes(), rng)
            damaged.write_bytes(data)
        cases.append((f"calibration {where}", ["estimate", "--tp", "2", "--calibration", str(damaged), "--quiet"]))
        run = folder / "run"
        shutil.copytree(MEASURED_RESULTS, run)
        name = rng.choice(["run.json", "readings.csv"])
        if name == "run.json" and rng.random() < 0.6:
            document, where = _mutate_json(json.loads((run / name).read_text()), rng, HOSTILE)
            (run / name).write_text(json.dumps(document))
        else:
            data, where = _mutate_bytes((run / name).read_bytes(), rng)
            (run / name).write_bytes(data)
        cases.append((f"run {name} {where}", ["report", str(run)]))
        cases.append((f"gate --results {name} {where}", ["gate", "--baseline", str(MEASURED_BASELINE), "--results", str(run)]))
        variable = rng.choice(["NCCL_BUFFSIZE", "NCCL_LL_BUFFSIZE", "NCCL_LL128_BUFFSIZE", "NCCL_MAX_CTAS", "NCCL_MIN_CTAS",
                               "NCCL_MAX_NCHANNELS", "NCCL_MIN_NCHANNELS", "NCCL_CUMEM_ENABLE", "NCCL_P2P_NVL_CHUNKSIZE"])
        value = rng.choice(["-1", "0", "0x", "08", "1e9", "9" * rng.randrange(1, 40), "-" + "9" * 25, " 12", "ü", "1_0",
                            str(rng.randrange(-2**40, 2**40))])
        cases.append((f"--env {variable}={value}", ["estimate", "--tp", "4", "--ep", "2", "--env", f"{variable}={value}",
                                                     "--quiet"]))
    failures = []
    for what, args in cases:
        try:
            code = main(args)
        except Exception as error:  # main() lets nothing out: a raise here is a failure to list, not to stop at
            code = f"raised {type(error).__name__}"
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if ": error: " in line]
        if code in (1, 70) or "Traceback" in captured.err or (code not in (0, 4) and len(errors) != 1) \
                or code not in (0, 2, 3, 4):
            failures.append(f"{what}: exit {code}: {captured.err.strip()[-300:]}")
    assert failures == [], "\n".join(failures)

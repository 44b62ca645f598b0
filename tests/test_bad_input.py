"""Bad input: one line on stderr, exit code 2, nothing launched, no file or folder created.

The bad-input table of docs/reliability.md lists these same cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memprobe.errors import UsageError

CASES = {
    # etcd rendezvous keeps torchrun's store from the workers; each scenario rendezvouses there
    "rdzv-backend-etcd": ["run", "--device", "cpu", "--tp", "2", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:29400",
                          "--rdzv-backend", "etcd"],
    "ep larger than tp": ["plan", "--tp", "2", "--ep", "4"],
    "width that does not divide": ["run", "--device", "cpu", "--tp", "4", "--ep", "3"],
    "zero width": ["run", "--device", "cpu", "--tp", "0"],
    "negative width": ["plan", "--tp", "4", "--pp", "-2"],
    "attention widths that do not divide": ["plan", "--tp", "4", "--attn-dp", "3"],
    "not a number": ["run", "--device", "cpu", "--tp", "four"],
    "unknown option": ["run", "--device", "cpu", "--tp", "2", "--bogus"],
    "unknown stack": ["run", "--device", "cpu", "--tp", "2", "--stack", "medium"],
    "unknown stack in --stacks": ["compare", "--device", "cpu", "--tp", "2", "--stacks", "full,medium"],
    "malformed stack file": ["run", "--device", "cpu", "--tp", "2", "--stack", "bad-stack.toml"],
    "stack file naming an unknown group": ["run", "--device", "cpu", "--tp", "2", "--stack", "unknown-group.toml"],
    "missing stack file": ["run", "--device", "cpu", "--tp", "2", "--stack", "missing.toml"],
    "truncated scenario file": ["compare", "--device", "cpu", "--scenarios", "truncated.toml"],
    "scenario file with an invalid layout": ["compare", "--device", "cpu", "--scenarios", "bad-layout.toml"],
    "scenario file with a duplicate name": ["compare", "--device", "cpu", "--scenarios", "duplicate.toml"],
    "missing scenario file": ["compare", "--device", "cpu", "--scenarios", "nowhere.toml"],
    "layout options a scenario file would ignore": ["compare", "--device", "cpu", "--scenarios", "ok.toml", "--tp", "8"],
    "--warmup a scenario file would ignore": ["compare", "--device", "cpu", "--scenarios", "ok.toml", "--warmup", "sweep"],
    "bad --env syntax": ["run", "--device", "cpu", "--tp", "2", "--env", "NCCL_BUFFSIZE"],
    "bad --env name": ["run", "--device", "cpu", "--tp", "2", "--env", "1X=2"],
    "zero timeout": ["run", "--device", "cpu", "--tp", "2", "--timeout", "0"],
    "negative timeout": ["run", "--device", "cpu", "--tp", "2", "--timeout", "-5"],
    "unknown device": ["run", "--device", "tpu", "--tp", "2"],
    "unknown warm-up": ["run", "--device", "cpu", "--tp", "2", "--warmup", "huge"],
    "unknown environment preset": ["run", "--device", "cpu", "--tp", "2", "--env-preset", "vllm9"],
    "node rank outside nnodes": ["run", "--device", "cpu", "--tp", "2", "--nnodes", "2", "--node-rank", "2"],
    "unwritable export folder": ["compare", "--device", "cpu", "--tp", "2", "--csv", "no/such/folder/out.csv"],
    "export with the wrong suffix": ["compare", "--device", "cpu", "--tp", "2", "--plot", "out.gif"],
    "export path that is a folder": ["compare", "--device", "cpu", "--tp", "2", "--json", "afolder"],
    "two exports naming one file": ["compare", "--device", "cpu", "--tp", "2", "--csv", "out.csv", "--summary-csv", "./out.csv"],
    "output folder under a file": ["run", "--device", "cpu", "--tp", "2", "--out-dir", "afile/results"],
    "report of a missing folder": ["report", "does-not-exist"],
    "report of a folder that is not a run": ["report", "afolder"],
    "report of a corrupt run.json": ["report", "corrupt-run"],
    "report of a truncated readings.csv": ["report", "truncated-run"],
    "existing --run-id": ["run", "--device", "cpu", "--tp", "2", "--run-id", "taken"],
}

FILES = {
    "bad-stack.toml": "name = \"x\"\n[groups.tp\npynccl = true\n",
    "unknown-group.toml": "[groups.moe_xx]\npynccl = true\n",
    "truncated.toml": "[[scenario]]\nname = \"a\"\ntp = ",
    "bad-layout.toml": "[[scenario]]\nname = \"a\"\ntp = 4\nep = 3\n",
    "duplicate.toml": "[[scenario]]\nname = \"a\"\ntp = 2\n[[scenario]]\nname = \"a\"\ntp = 2\n",
    "ok.toml": "[[scenario]]\nname = \"a\"\ntp = 2\n",
    "afile": "not a folder\n",
}


def _prepare(folder: Path) -> None:
    for name, text in FILES.items():
        (folder / name).write_text(text)
    (folder / "afolder").mkdir()
    (folder / "corrupt-run").mkdir()
    (folder / "corrupt-run" / "run.json").write_text('{"schema_version": 1, "run_id": ')
    from support import headline_scenarios, synthetic_run
    from memprobe.model.run_files import write_run

    run = synthetic_run(headline_scenarios().scenarios[0])
    (folder / "truncated-run").mkdir()
    write_run(folder / "truncated-run", run.record, run.readings)
    csv_path = folder / "truncated-run" / "readings.csv"
    text = csv_path.read_text()
    csv_path.write_text(text[: len(text) // 2].rsplit(",", 3)[0] + "\n")
    (folder / "memprobe-runs" / "taken").mkdir(parents=True)


def _snapshot(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES.keys()))
def test_bad_input_is_one_line_exit_2_and_creates_nothing(memprobe, tmp_path, args):
    _prepare(tmp_path)
    before = _snapshot(tmp_path)
    result = memprobe(*args, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("memprobe: error: ")
    assert "Traceback" not in result.stderr
    assert _snapshot(tmp_path) == before  # no process ran, nothing was written


def test_more_gpus_than_visible_is_refused_before_launch(monkeypatch):
    """The GPU-count check, with a fake NVML boundary reporting two GPUs."""
    from memprobe.launch import prepare as launcher
    from memprobe.measure import nvml
    from memprobe.launch.options import LaunchOptions
    from memprobe.engines.sglang.layout import SGLangLayout as Layout
    from memprobe.model.scenario import Scenario

    gpus = [nvml.GpuIdentity(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", f"0000:0{i}:00.0") for i in range(2)]
    monkeypatch.setattr(nvml, "visible_gpus", lambda environ=None: gpus)
    with pytest.raises(UsageError) as error:
        launcher.preflight([Scenario("tp4", Layout(tp=4, ep=2))], LaunchOptions())
    assert "needs 4 GPUs per node but this node has 2" in str(error.value)
    assert "memprobe compare --tp 2 --ep 1" in str(error.value)


def test_no_gpu_at_all_says_to_use_cpu(monkeypatch):
    from memprobe.launch import prepare as launcher
    from memprobe.measure import nvml
    from memprobe.launch.options import LaunchOptions
    from memprobe.engines.sglang.layout import SGLangLayout as Layout
    from memprobe.model.scenario import Scenario

    monkeypatch.setattr(nvml, "visible_gpus", lambda environ=None: nvml.NotAvailable("NVML unavailable: no driver"))
    with pytest.raises(UsageError) as error:
        launcher.preflight([Scenario("tp2", Layout(tp=2))], LaunchOptions())
    assert "--device cpu" in str(error.value) and "no driver" in str(error.value)


def test_a_store_torchrun_keeps_from_its_workers_is_refused_before_launch(memprobe, tmp_path):
    result = memprobe("run", "--device", "cpu", "--tp", "2", env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["memprobe: error: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 keeps torchrun's "
                                                   "store from its workers, where each scenario rendezvouses; unset it"]
    assert list(tmp_path.iterdir()) == []

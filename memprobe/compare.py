"""Run several scenarios, each in its own clean set of processes, and load saved comparisons.

A comparison folder is ``<out>/<comparison-id>/`` with ``comparison.json`` and one run
folder per scenario (``<comparison-id>/<scenario-name>/run.json`` ...).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from memprobe.errors import UsageError
from memprobe.layout import Layout
from memprobe.results import Run, atomic_write_text, load_run
from memprobe.scenarios import Comparison, Scenario, ScenarioRun, ScenarioSet

COMPARISON_FILE = "comparison.json"


def scenario_from_run(run: Run) -> Scenario:
    record = run.record
    name = record.scenario or (run.path.name if run.path else record.run_id)
    return Scenario(
        name=name,
        layout=Layout(**record.layout),
        stack=record.stack_name,
        env_preset=record.env_preset,
        env=dict(record.env),
        warmup=record.warmup,
        engine=record.engine or "memprobe",
    )


def write_comparison_index(path: Path, comparison_id: str, scenario_set: ScenarioSet, folders: dict[str, str]) -> None:
    document = {
        "schema_version": 1,
        "comparison_id": comparison_id,
        "baseline": scenario_set.baseline,
        "scenarios": [dict(s.definition(), folder=folders.get(s.name)) for s in scenario_set.scenarios],
    }
    atomic_write_text(path / COMPARISON_FILE, json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_comparison(path: str | Path) -> Comparison:
    """A comparison folder, or a single run folder (a comparison of one scenario)."""
    path = Path(path)
    index = path / COMPARISON_FILE
    if index.is_file():
        try:
            document = json.loads(index.read_text(encoding="utf-8"))
            entries = document["scenarios"]
            baseline = document["baseline"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise UsageError(f"{index}: not a memprobe comparison index ({error})") from None
        runs: list[ScenarioRun] = []
        for entry in entries:
            folder = entry.get("folder")
            if not folder or not (path / folder / "run.json").is_file():
                continue  # a scenario that never started (the comparison stopped early)
            run = load_run(path / folder)
            runs.append(ScenarioRun(scenario=replace(scenario_from_run(run), name=entry["name"]), run=run))
        if not runs:
            raise UsageError(f"{path}: the comparison holds no finished run")
        names = [item.scenario.name for item in runs]
        return Comparison(
            comparison_id=str(document.get("comparison_id", path.name)),
            baseline=baseline if baseline in names else names[0],
            runs=runs,
            path=path,
        )
    if (path / "run.json").is_file():
        run = load_run(path)
        scenario = scenario_from_run(run)
        return Comparison(comparison_id=run.record.run_id, baseline=scenario.name, runs=[ScenarioRun(scenario, run)], path=path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    raise UsageError(f"{path} is neither a run folder (run.json) nor a comparison folder ({COMPARISON_FILE})")


def merge_comparisons(comparisons: list[Comparison]) -> Comparison:
    """Several saved runs or comparisons shown as one; the first one's baseline stays the baseline."""
    if len(comparisons) == 1:
        return comparisons[0]
    runs: list[ScenarioRun] = []
    seen: set[str] = set()
    for comparison in comparisons:
        for item in comparison.runs:
            name = item.scenario.name
            suffix = 2
            while name in seen:
                name = f"{item.scenario.name}-{suffix}"
                suffix += 1
            seen.add(name)
            runs.append(ScenarioRun(scenario=replace(item.scenario, name=name), run=item.run))
    return Comparison(comparison_id="+".join(c.comparison_id for c in comparisons), baseline=comparisons[0].baseline, runs=runs)




def run_scenarios(scenario_set: ScenarioSet, options, progress=None, command: list[str] | None = None,
                  jobs: int = 1) -> Comparison:
    """Run every scenario in its own torchrun launch (fresh processes, fresh CUDA contexts).

    Results go to ``options.out_dir/<comparison-id>/<scenario>/``; ``comparison.json`` is
    rewritten after every scenario, so a comparison that stops early keeps what finished.
    A failing scenario stops the comparison with :class:`MeasurementError`.
    """
    from memprobe.launcher import new_run_dir, preflight, run_scenario

    preflight(list(scenario_set.scenarios), options)
    root = Path(options.out_dir)
    name = options.run_id or "compare-" + "-vs-".join(dict.fromkeys(s.layout.slug() for s in scenario_set.scenarios))
    path = root / options.run_id if options.run_id else new_run_dir(root, name)
    if path.exists():
        raise UsageError(f"output folder {path} already exists; choose another --run-id")
    path.mkdir(parents=True)
    if jobs <= 0:  # auto: side by side on GPUs (per-process figures), one after another on CPUs (2-core CI)
        jobs = len(scenario_set.scenarios) if options.device == "cuda" else 1
    folders = {scenario.name: scenario.name for scenario in scenario_set.scenarios}
    write_comparison_index(path, path.name, scenario_set, folders)
    if jobs <= 1:
        runs = [ScenarioRun(scenario, run_scenario(scenario, options, path / scenario.name, progress=progress, command=command))
                for scenario in scenario_set.scenarios]
    else:
        runs = _run_concurrently(scenario_set, options, path, jobs, progress, command)
    return Comparison(comparison_id=path.name, baseline=scenario_set.baseline, runs=runs, path=path)


def _run_concurrently(scenario_set: ScenarioSet, options, path: Path, jobs: int, progress, command) -> list[ScenarioRun]:
    """``--jobs N``: scenarios run side by side, each in its own torchrun launch and processes.

    Per-process NVML figures are unaffected by other processes on the same GPUs; device-level
    figures are not, so a worker that cannot read per-process figures refuses to run on a GPU
    other processes use (unless --allow-busy-gpu). Signals reach only this (main) thread, which
    passes them on through a StopFlag.
    """
    import concurrent.futures
    import signal as signals

    from memprobe.errors import Interrupted
    from memprobe.launcher import StopFlag, run_scenario

    import uuid

    stop = StopFlag()
    token = uuid.uuid4().hex
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {scenario.name: pool.submit(run_scenario, scenario, options, path / scenario.name, progress, command,
                                              stop, token)
                   for scenario in scenario_set.scenarios}
        try:
            pending = set(futures.values())
            while pending:
                _, pending = concurrent.futures.wait(pending, timeout=0.2)
        except KeyboardInterrupt as interrupt:
            number = interrupt.args[0] if interrupt.args and isinstance(interrupt.args[0], int) else signals.SIGINT
            stop.stop(number)
            concurrent.futures.wait(futures.values())
            raise Interrupted(number, str(path)) from None
    runs = []
    for scenario in scenario_set.scenarios:
        runs.append(ScenarioRun(scenario, futures[scenario.name].result()))  # re-raises the first failure in order
    return runs


def with_engines(scenario_set: ScenarioSet, engines: list[str]) -> ScenarioSet:
    """Every scenario once per engine; SGLang's copies are named ``<name>.sglang``."""
    if engines == ["memprobe"]:
        return scenario_set
    scenarios = []
    for scenario in scenario_set.scenarios:
        for engine in engines:
            name = scenario.name if engine == "memprobe" else f"{scenario.name}.{engine}"
            scenarios.append(replace(scenario, name=name, engine=engine))
    baseline = scenario_set.baseline if "memprobe" in engines else f"{scenario_set.baseline}.{engines[0]}"
    return ScenarioSet(scenarios=tuple(scenarios), baseline=baseline)


def headline_scenarios(tp: int, ep: int, stacks: list[str], pp: int = 1, moe_dp: int = 1, attn_dp: int = 1,
                       attn_cp: int = 1, baseline_tp: int | None = None, env_preset: str = "sglang",
                       env: dict[str, str] | None = None, warmup: str = "tiny") -> ScenarioSet:
    """``--tp T`` as the baseline (no MoE groups of its own), then the MoE layout once per stack."""
    env = dict(env or {})
    baseline_layout = Layout(tp=baseline_tp or tp, pp=pp, attn_dp=attn_dp, attn_cp=attn_cp)
    moe_layout = Layout(tp=tp, ep=ep, pp=pp, moe_dp=moe_dp, attn_dp=attn_dp, attn_cp=attn_cp)
    baseline = Scenario(name=baseline_layout.slug(), layout=baseline_layout, stack="lean", env_preset=env_preset,
                        env=env, warmup=warmup)
    scenarios = [baseline]
    for stack in stacks:
        label = Path(stack).stem if stack.endswith(".toml") else stack.replace(":", "-")
        scenarios.append(Scenario(name=f"{moe_layout.slug()}-{label}", layout=moe_layout, stack=stack,
                                  env_preset=env_preset, env=env, warmup=warmup))
    return ScenarioSet(scenarios=tuple(scenarios), baseline=baseline.name)

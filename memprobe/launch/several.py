"""Run the scenarios of a comparison, each in its own torchrun launch, one after another or side by side."""

from __future__ import annotations

from pathlib import Path

from memprobe.errors import UsageError
from memprobe.model.comparison import Comparison, ScenarioRun, write_comparison_index
from memprobe.model.scenario import ScenarioSet


def run_scenarios(scenario_set: ScenarioSet, options, progress=None, command: list[str] | None = None,
                  jobs: int = 1) -> Comparison:
    """Run every scenario in its own torchrun launch (fresh processes, fresh CUDA contexts).

    Results go to ``options.out_dir/<comparison-id>/<scenario>/``; ``comparison.json`` is
    rewritten after every scenario, so a comparison that stops early keeps what finished.
    A failing scenario stops the comparison with :class:`MeasurementError`.
    """
    from memprobe.launch.supervisor import new_run_dir, preflight, run_scenario

    preflight(list(scenario_set.scenarios), options)
    root = Path(options.out_dir)
    name = options.run_id or "compare-" + "-vs-".join(dict.fromkeys(s.layout.slug() for s in scenario_set.scenarios))
    path = root / options.run_id if options.run_id else new_run_dir(root, name)
    if path.exists():
        raise UsageError(f"output folder {path} already exists; choose another --run-id")
    path.mkdir(parents=True)
    if options.nnodes > 1:
        jobs = 1  # every node must launch the same scenario on the same rendezvous at the same time
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
    from memprobe.launch.supervisor import StopFlag, run_scenario

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

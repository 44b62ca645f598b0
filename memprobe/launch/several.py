"""Measure a run's scenario or a comparison's, in as few torchrun launches as can share one.

A comparison's scenarios share one launch whenever their environments differ only in what is
read after the fork (:mod:`memprobe.launch.plan`): torchrun starts and torch is imported once,
then every scenario runs in processes of its own, side by side (``--jobs``) or in turn.
"""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Callable, Sequence

from memprobe.errors import MeasurementError, UsageError
from memprobe.launch.options import LaunchOptions, nccl_log_environment, worker_environment
from memprobe.launch.plan import Member, plan_launches
from memprobe.launch.prepare import new_run_dir, preflight
from memprobe.launch.supervisor import ProgressCallback, StopFlag, run_launch
from memprobe.model.comparison import Comparison, ScenarioRun, write_comparison_index
from memprobe.model.records import Run
from memprobe.model.scenario import Scenario, ScenarioSet


def member(scenario: Scenario, options: LaunchOptions, run_dir: Path) -> Member:
    environment = worker_environment(scenario, options)
    if options.nccl_log:  # NCCL's own account of every communicator
        environment.update(nccl_log_environment(run_dir))
    return Member(scenario=scenario, run_dir=run_dir, environment=environment)


def run_scenario(scenario: Scenario, options: LaunchOptions, run_dir: Path, progress: ProgressCallback | None = None,
                 command: list[str] | None = None) -> Run:
    """``memprobe run``: one scenario in one launch, into ``run_dir`` (created here).

    Raises :class:`MeasurementError` when a rank fails, goes silent past ``options.timeout_s`` or
    the launch breaks; ``run.json`` (status ``incomplete``) and every finished reading are kept.
    """
    [planned] = plan_launches([member(scenario, options, run_dir)])
    return run_launch(planned, options, run_dir, jobs=1, progress=progress, command=command)[0]


def run_scenarios(scenario_set: ScenarioSet, options: LaunchOptions, progress: ProgressCallback | None = None,
                  command: list[str] | None = None, jobs: int = 1) -> Comparison:
    """Every scenario, each in processes and CUDA contexts of its own, in as few launches as can share one.

    Results go to ``options.out_dir/<comparison-id>/<scenario>/``. ``jobs`` scenarios run at once
    (0: all of them side by side on GPUs, where per-process figures keep them apart; in turn on
    CPUs, where a 2-core CI machine would only slow them down). A failing scenario does not stop
    the others of its launch; the first failure is raised once they all ended.
    """
    scenarios = list(scenario_set.scenarios)
    preflight(scenarios, options)
    root = Path(options.out_dir)
    name = options.run_id or "compare-" + "-vs-".join(dict.fromkeys(s.layout.slug() for s in scenarios))
    path = root / options.run_id if options.run_id else new_run_dir(root, name)
    if path.exists():
        raise UsageError(f"output folder {path} already exists; choose another --run-id")
    path.mkdir(parents=True)
    if jobs <= 0:
        jobs = len(scenarios) if options.device == "cuda" else 1
    write_comparison_index(path, path.name, scenario_set, {scenario.name: scenario.name for scenario in scenarios})
    launches = plan_launches([member(scenario, options, path / scenario.name) for scenario in scenarios])
    # Separate launches side by side only on one node: on several, they would share --master-port (static) or
    # the first launch's store (c10d), which goes when that launch ends.
    together = len(launches) > 1 and jobs >= len(scenarios) and options.nnodes == 1
    beside = uuid.uuid4().hex if together else None
    calls = [functools.partial(run_launch, planned, options, path, jobs, "" if len(launches) == 1 else f"-{index + 1}",
                               progress, command, beside=beside) for index, planned in enumerate(launches)]
    try:
        if together:  # every scenario side by side, whichever launch it is in
            done = _side_by_side(calls, path)
        else:
            done = [run for call in calls for run in call()]
    except MeasurementError as failure:
        raise _with_the_finished(failure, scenarios, path) from None
    runs = {run.record.scenario: run for run in done}
    return Comparison(comparison_id=path.name, baseline=scenario_set.baseline,
                      runs=[ScenarioRun(scenario, runs[scenario.name]) for scenario in scenarios], path=path)


def _with_the_finished(failure: MeasurementError, scenarios: list[Scenario], path: Path) -> MeasurementError:
    """The first failure, and which scenarios did finish (their tables are one `memprobe report` away)."""
    from memprobe.model.records import RunStatus
    from memprobe.model.run_files import load_run

    finished = []
    for scenario in scenarios:
        try:
            if load_run(path / scenario.name).record.status == RunStatus.COMPLETE:
                finished.append(scenario.name)
        except UsageError:  # never started: no run.json
            continue
    if not finished:
        return failure
    return MeasurementError(f"{failure}; finished: {', '.join(finished)} (memprobe report {path} shows them)",
                            run_dir=failure.run_dir)


def _side_by_side(calls: Sequence[Callable[..., list[Run]]], path: Path) -> list[Run]:
    """Launches that cannot share one (another SGLang installation, say) run at the same time, each followed
    from a thread of its own. Signals reach only this (main) thread, which passes them on through a StopFlag."""
    import concurrent.futures

    from memprobe.errors import Interrupted, interrupt_signal

    stop = StopFlag()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call, stop=stop) for call in calls]
        try:
            pending = set(futures)
            while pending:
                _, pending = concurrent.futures.wait(pending, timeout=0.2)
        except KeyboardInterrupt as interrupt:
            number = interrupt_signal(interrupt)
            stop.stop(number)
            concurrent.futures.wait(futures)
            raise Interrupted(number, str(path)) from None
    return [run for future in futures for run in future.result()]  # re-raises the first failure, in launch order

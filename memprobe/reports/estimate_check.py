"""``memprobe estimate --check``: the estimate beside measured runs, per run, rank and step, with the error."""

from __future__ import annotations

from collections import defaultdict
from typing import TextIO

from memprobe.estimate.check import BOUND_FLOOR, BOUND_FRACTION, RunCheck, bound
from memprobe.units import UNIT, mib


def _percent(error: int, measured: int) -> str:
    return f"{100.0 * error / measured:+.1f} %" if measured else "n/a"


def render_check(results: list[RunCheck], stream: TextIO, *, per_rank: bool = False) -> None:
    checked = [result for result in results if not result.skipped]
    print(f"estimate (NCCL rules + calibration) against measured runs: {len(checked)} checked, "
          f"{len(results) - len(checked)} not checked; a total passes within max({BOUND_FRACTION:.0%}, "
          f"{BOUND_FLOOR >> 20} {UNIT}) of the measured total; {UNIT} = 2^20 bytes", file=stream)
    for result in checked:
        _run_lines(result, stream)
        if per_rank:
            _step_lines(result, stream)
    _per_gpu_count(checked, stream)
    _largest_steps(checked, stream)
    reasons: dict[str, list[str]] = defaultdict(list)
    for result in results:
        if result.skipped:
            reasons[result.skipped].append(result.path)
    for reason, paths in sorted(reasons.items()):
        print(f"not checked ({reason}): {len(paths)} run(s), e.g. {paths[0]}", file=stream)


def _run_lines(result: RunCheck, stream: TextIO) -> None:
    parts = []
    for what in ("after init", "after first use"):
        worst = result.worst(what)
        if worst is not None:
            parts.append(f"{what}: rank {worst.rank} measured {mib(worst.measured)} estimated {mib(worst.estimated)} "
                         f"error {mib(worst.error, signed=True)} {UNIT} ({_percent(worst.error, worst.measured)})")
    verdict = "within bound" if result.within else "OUT OF BOUND"
    print(f"  {result.path} [{result.gpus} x {result.gpu}, {result.scenario}]: {'; '.join(parts)}: {verdict}", file=stream)


def _step_lines(result: RunCheck, stream: TextIO) -> None:
    for step in result.steps:
        rank, error = step.worst
        measured = ", ".join(mib(step.measured.get(r)) for r in sorted(step.measured))
        estimated = ", ".join(mib(step.estimated.get(r, 0)) for r in sorted(step.measured))
        print(f"      {step.group or '-'}/{step.step}: measured [{measured}] estimated [{estimated}] {UNIT}; "
              f"largest error {mib(error, signed=True)} {UNIT} (rank {rank})", file=stream)


def _per_gpu_count(checked: list[RunCheck], stream: TextIO) -> None:
    """The largest total error per node shape: GPUs of one node, or nodes of N GPUs and the network joining them."""
    by_count: dict[tuple[int, int, str], list[tuple[int, str, RunCheck]]] = defaultdict(list)
    for result in checked:
        nodes = result.world_size // max(1, result.gpus) if result.network else 1
        for total in result.totals:
            by_count[(nodes, result.gpus, result.network)].append((total.error, f"{total.what}, rank {total.rank}", result))
    for nodes, count, network in sorted(by_count):
        error, where, result = max(by_count[(nodes, count, network)], key=lambda item: abs(item[0]))
        measured = next(t.measured for t in result.totals if f"{t.what}, rank {t.rank}" == where)
        shape = f"{nodes} nodes of {count} GPU(s) over {network}" if network else f"{count} GPU(s)"
        print(f"largest total error on {shape}: {mib(error, signed=True)} {UNIT} ({_percent(error, measured)}; "
              f"bound {mib(bound(measured))} {UNIT}) at {where} of {result.path}", file=stream)


def _largest_steps(checked: list[RunCheck], stream: TextIO) -> None:
    worst: dict[tuple[str, str], tuple[int, RunCheck, int]] = {}
    for result in checked:
        for step in result.steps:
            rank, error = step.worst
            key = (step.group, step.step)
            if key not in worst or abs(error) > abs(worst[key][0]):
                worst[key] = (error, result, rank)
    shown = [(key, value) for key, value in worst.items() if value[0]]
    if not checked:
        return
    if not shown:
        print("every step of every checked run: estimated to the byte", file=stream)
        return
    print("largest step errors (estimated minus measured):", file=stream)
    for (group, step_name), (error, result, rank) in sorted(shown, key=lambda item: -abs(item[1][0]))[:12]:
        print(f"  {group or '-'}/{step_name}: {mib(error, signed=True)} {UNIT} (rank {rank} of {result.path})", file=stream)

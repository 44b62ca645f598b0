"""Fidelity report: the reference engine against real SGLang, per rank, group and step.

Pairs are scenarios of one comparison that differ only by engine (``NAME`` and ``NAME.sglang``,
as ``memprobe compare --engine memprobe,sglang`` names them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from memprobe.attribution import TOTAL_AFTER_FIRST_USE, TOTAL_AFTER_INIT, components_by_rank, rank_readings, step_deltas
from memprobe.scenarios import Comparison, ScenarioRun

MiB = 1 << 20
TOLERANCE_BYTES = 2 * MiB


@dataclass(frozen=True)
class StepDifference:
    group: str
    step: str
    reference_bytes: dict[int, int | None]
    sglang_bytes: dict[int, int | None]

    @property
    def largest(self) -> int | None:
        differences = [abs(a - b) for rank, a in self.reference_bytes.items()
                       if a is not None and (b := self.sglang_bytes.get(rank)) is not None]
        return max(differences) if differences else None


def pairs(comparison: Comparison) -> list[tuple[ScenarioRun, ScenarioRun]]:
    found = []
    for item in comparison.runs:
        if item.scenario.engine != "sglang":
            continue
        base_name = item.scenario.name.rsplit(".", 1)[0]
        partner = [other for other in comparison.runs if other.scenario.name == base_name and other.scenario.engine == "memprobe"]
        if partner:
            found.append((partner[0], item))
    return found


def _added(item: ScenarioRun) -> dict[tuple[str, str], dict[int, int | None]]:
    result: dict[tuple[str, str], dict[int, int | None]] = {}
    for rank, readings in rank_readings(item.run).items():
        for reading, delta in step_deltas(readings):
            if reading.step == "start":
                continue
            result.setdefault((reading.group, reading.step), {})[rank] = delta
    return result


def differences(reference: ScenarioRun, sglang: ScenarioRun) -> list[StepDifference]:
    left, right = _added(reference), _added(sglang)
    keys = list(left) + [key for key in right if key not in left]
    return [StepDifference(group, step, left.get((group, step), {}), right.get((group, step), {})) for group, step in keys]


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MiB:,.1f}"


def render_fidelity(comparison: Comparison, stream: TextIO) -> None:
    for reference, sglang in pairs(comparison):
        print(f"fidelity: {reference.scenario.name} (memprobe's reference engine) against {sglang.scenario.name} "
              f"(SGLang's initialize_model_parallel), bytes added per step, MiB", file=stream)
        print(f"{'group/step':<32} {'reference max':>14} {'SGLang max':>11} {'largest |diff|':>15}", file=stream)
        beyond = []
        for difference in differences(reference, sglang):
            ref_max = max((v for v in difference.reference_bytes.values() if v is not None), default=None)
            sgl_max = max((v for v in difference.sglang_bytes.values() if v is not None), default=None)
            largest = difference.largest
            if not difference.reference_bytes or not difference.sglang_bytes:
                beyond.append(f"{difference.group or '-'}/{difference.step} (only in "
                              f"{'SGLang' if not difference.reference_bytes else 'the reference engine'})")
            elif largest is not None and largest > TOLERANCE_BYTES:
                beyond.append(f"{difference.group or '-'}/{difference.step} ({_mib(largest)} MiB)")
            if (ref_max or 0) == 0 and (sgl_max or 0) == 0 and (largest or 0) == 0:
                continue  # nothing happened in either engine
            label = f"{difference.group}/{difference.step}" if difference.group else difference.step
            print(f"{label:<32} {_mib(ref_max):>14} {_mib(sgl_max):>11} {_mib(largest):>15}", file=stream)
        left, right = components_by_rank(reference.run), components_by_rank(sglang.run)
        for key in (TOTAL_AFTER_INIT, TOTAL_AFTER_FIRST_USE):
            per_rank = []
            for rank in sorted(left):
                a, b = left[rank].get(key), right.get(rank, {}).get(key)
                per_rank.append(f"{rank}: {_mib(None if a is None or b is None else b - a)}")
            print(f"{key.replace('_', ' ')}: SGLang minus reference per rank (MiB): {', '.join(per_rank)}", file=stream)
        if beyond:
            print(f"beyond {TOLERANCE_BYTES // MiB} MiB: {', '.join(beyond)}", file=stream)
        else:
            print(f"every rank, group and step within {TOLERANCE_BYTES // MiB} MiB", file=stream)
        print(file=stream)

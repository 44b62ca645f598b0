"""Fidelity report: an engine's reproduction against the installed engine, per rank, group and step.

Pairs are scenarios of one comparison that differ only by engine mode (``NAME`` and ``NAME.<installed name>``,
as ``memprobe compare --engine memprobe,sglang`` names them ``NAME.sglang``), and each installation with the
reproduction's stack the engine says it matches (:meth:`Engine.release_partners`). The JSON document names the
installed side ``installed``; an export of an earlier memprobe named it ``sglang`` (its schema takes both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TextIO

from memprobe.analysis.attribution import (
    TOTAL_AFTER_FIRST_USE, TOTAL_AFTER_INIT, components_by_rank, rank_readings, step_deltas, torch_cache,
)
from memprobe.model.comparison import Comparison, ScenarioRun
from memprobe.model.records import StepStatus
from memprobe.model.steps import is_group_init_step, GROUPS_CREATED

from memprobe.units import MIB as MiB, mib

TOLERANCE_BYTES = 2 * MiB


@dataclass(frozen=True)
class StepDifference:
    """Bytes one step added on each rank, in each engine; ``*_cache`` is the part torch's caching allocator
    reserved (``torch_reserved_bytes`` moved by it), which tells allocator effects from communicators."""

    group: str
    step: str
    reference_bytes: dict[int, int | None]
    installed_bytes: dict[int, int | None]
    reference_cache: dict[int, int | None] = field(default_factory=dict)
    installed_cache: dict[int, int | None] = field(default_factory=dict)

    def _per_rank(self, left: dict[int, int | None], right: dict[int, int | None]) -> dict[int, int]:
        return {rank: b - a for rank, a in left.items() if a is not None and (b := right.get(rank)) is not None}

    @property
    def largest(self) -> int | None:
        differences = [abs(d) for d in self._per_rank(self.reference_bytes, self.installed_bytes).values()]
        return max(differences) if differences else None

    @property
    def largest_cache(self) -> int | None:
        differences = [abs(d) for d in self._per_rank(self.reference_cache, self.installed_cache).values()]
        return max(differences) if differences else None

    @property
    def all_in_torch_cache(self) -> bool:
        """True when, on every rank, the engines differ at this step by exactly what torch's cache differs by."""
        memory = self._per_rank(self.reference_bytes, self.installed_bytes)
        cache = self._per_rank(self.reference_cache, self.installed_cache)
        return bool(memory) and any(memory.values()) and all(cache.get(rank) == d for rank, d in memory.items())


def pairs(comparison: Comparison) -> list[tuple[ScenarioRun, ScenarioRun]]:
    """``NAME`` with its installed twin ``NAME.<name>`` (same stack on both modes), and each real installation
    (``compare --sglang LABEL=SITE``, stack ``installed``) with the reference stack it matches."""
    found = []
    for item in comparison.runs:
        ref = item.scenario.engine_ref
        if not ref.installed:
            continue
        references = [other for other in comparison.runs if other.scenario.engine_ref.engine is ref.engine
                      and not other.scenario.engine_ref.installed]
        if item.scenario.stack == "installed":
            partner = ref.engine.release_partners(item, references)
        else:
            base_name = item.scenario.name.rsplit(".", 1)[0]
            partner = [other for other in references if other.scenario.name == base_name]
        if partner:
            found.append((partner[0], item))
    return found


def built_by(item: ScenarioRun) -> dict[tuple[str, str], bool]:
    """Per ``(group, step)`` of the communicator steps: whether any rank built it (status ok)."""
    built: dict[tuple[str, str], bool] = {}
    for reading in item.run.readings:
        if is_group_init_step(reading.step) and reading.step != GROUPS_CREATED:
            key = (reading.group, reading.step)
            built[key] = built.get(key, False) or reading.status == StepStatus.OK
    return built


def _label(installed: ScenarioRun) -> str:
    return installed.scenario.engine_ref.engine.label


def built_in_one(reference: ScenarioRun, installed: ScenarioRun, difference: "StepDifference") -> str | None:
    """``"built only by SGLang"`` (the installed engine's label) / ``"built only by the reference engine"`` for a
    communicator one side built and the other did not (a different group, not a difference in bytes)."""
    key = (difference.group, difference.step)
    left, right = built_by(reference).get(key), built_by(installed).get(key)
    if left is None or right is None or left == right:
        return None
    return f"built only by {_label(installed)}" if right else "built only by the reference engine"


def _added(item: ScenarioRun) -> dict[tuple[str, str], tuple[dict[int, int | None], dict[int, int | None]]]:
    """Per ``(group, step)``: bytes added per rank, and torch-reserved bytes added per rank."""
    result: dict[tuple[str, str], tuple[dict[int, int | None], dict[int, int | None]]] = {}
    for rank, readings in rank_readings(item.run).items():
        cache_deltas = step_deltas(readings, torch_cache)
        for (reading, delta), (_, cache) in zip(step_deltas(readings), cache_deltas):
            if reading.step == "start":
                continue
            memory, reserved_added = result.setdefault((reading.group, reading.step), ({}, {}))
            memory[rank], reserved_added[rank] = delta, cache
    return result


def differences(reference: ScenarioRun, installed: ScenarioRun) -> list[StepDifference]:
    left, right = _added(reference), _added(installed)
    result = []
    for key in list(left) + [key for key in right if key not in left]:
        reference_bytes, reference_cache = left.get(key, ({}, {}))
        installed_bytes, installed_cache = right.get(key, ({}, {}))
        result.append(StepDifference(key[0], key[1], reference_bytes, installed_bytes, reference_cache, installed_cache))
    return result


def _beyond(difference: StepDifference) -> bool:
    if not difference.reference_bytes or not difference.installed_bytes:
        return True
    return difference.largest is not None and difference.largest > TOLERANCE_BYTES


def fidelity_document(comparison: Comparison) -> list[dict[str, Any]]:
    """The fidelity report as JSON-ready data (bytes; rank keys as strings), one entry per engine pair."""
    def by_rank(values: dict[int, int | None]) -> dict[str, int | None]:
        return {str(rank): value for rank, value in sorted(values.items())}

    document = []
    for reference, installed in pairs(comparison):
        steps = differences(reference, installed)
        document.append({
            "reference": reference.scenario.name,
            "installed": installed.scenario.name,
            "installation": (installed.run.record.environment or {}).get(installed.scenario.engine_ref.engine.name),
            "tolerance_bytes": TOLERANCE_BYTES,
            # bytes only: a group or communicator only one side built is listed under built_in_one_engine / only_in
            "within_tolerance": not any(_beyond(d) and d.reference_bytes and d.installed_bytes
                                        and not built_in_one(reference, installed, d) for d in steps),
            "only_in": {f"{d.group}/{d.step}": _label(installed) if not d.reference_bytes else "reference"
                        for d in steps if not d.reference_bytes or not d.installed_bytes},
            "built_in_one_engine": {f"{d.group}/{d.step}": why for d in steps
                                    if (why := built_in_one(reference, installed, d))},
            "steps": [{
                "group": d.group, "step": d.step,
                "reference_bytes": by_rank(d.reference_bytes), "installed_bytes": by_rank(d.installed_bytes),
                "reference_torch_cache_bytes": by_rank(d.reference_cache),
                "installed_torch_cache_bytes": by_rank(d.installed_cache),
                "largest_difference_bytes": d.largest, "all_in_torch_cache": d.all_in_torch_cache,
            } for d in steps],
        })
    return document




def render_fidelity(comparison: Comparison, stream: TextIO) -> None:
    """Per pair: a row per step that added memory in either engine, the per-rank difference of the totals,
    and the steps beyond the tolerance. ``torch cache |diff|`` is how far the engines' torch-reserved
    bytes differ at that step; a difference that is all torch's caching allocator is marked as such."""
    for reference, installed in pairs(comparison):
        label = _label(installed)
        installation = (installed.run.record.environment or {}).get(installed.scenario.engine_ref.engine.name)
        version = installation.get("version") if isinstance(installation, dict) else installation
        # initialize_model_parallel: the function SGLang's and vLLM's parallel_state.py both build their groups in
        print(f"fidelity: {reference.scenario.name} (memprobe's reference engine) against {installed.scenario.name} "
              f"({label}{' ' + str(version) if version else ''}'s initialize_model_parallel), bytes added per step, MiB",
              file=stream)
        print(f"{'group/step':<32} {'reference max':>14} {label + ' max':>11} {'largest |diff|':>15} "
              f"{'torch cache |diff|':>19}", file=stream)
        beyond, cache_only, only_in = [], [], []
        for difference in differences(reference, installed):
            ref_max = max((v for v in difference.reference_bytes.values() if v is not None), default=None)
            installed_max = max((v for v in difference.installed_bytes.values() if v is not None), default=None)
            largest = difference.largest
            step = f"{difference.group}/{difference.step}" if difference.group else difference.step
            if not difference.reference_bytes or not difference.installed_bytes:
                only_in.append(f"{step} (only in {label if not difference.reference_bytes else 'the reference engine'})")
            elif (why := built_in_one(reference, installed, difference)):
                only_in.append(f"{step} ({why})")
            elif _beyond(difference):
                cause = ", all of it torch's cache" if difference.all_in_torch_cache else ""
                beyond.append(f"{step} ({mib(largest, decimals=1)} MiB{cause})")
            if difference.all_in_torch_cache:
                cache_only.append(step)
            if (ref_max or 0) == 0 and (installed_max or 0) == 0 and (largest or 0) == 0:
                continue  # nothing happened in either engine
            print(f"{step:<32} {mib(ref_max, decimals=1):>14} {mib(installed_max, decimals=1):>11} {mib(largest, decimals=1):>15} "
                  f"{mib(difference.largest_cache, decimals=1):>19}", file=stream)
        left, right = components_by_rank(reference.run), components_by_rank(installed.run)
        for key in (TOTAL_AFTER_INIT, TOTAL_AFTER_FIRST_USE):
            per_rank = []
            for rank in sorted(left):
                a, b = left[rank].get(key), right.get(rank, {}).get(key)
                per_rank.append(f"{rank}: {mib(None if a is None or b is None else b - a, decimals=1)}")
            print(f"{key.replace('_', ' ')}: {label} minus reference per rank (MiB): {', '.join(per_rank)}", file=stream)
        if cache_only:
            print(f"differences that are torch's caching allocator on every rank (torch-reserved bytes moved by "
                  f"exactly as much): {', '.join(cache_only)}", file=stream)
        if only_in:
            print(f"groups or communicators one engine built and the other did not (not byte differences): "
                  f"{', '.join(only_in)}", file=stream)
        if beyond:
            print(f"beyond {TOLERANCE_BYTES // MiB} MiB: {', '.join(beyond)}", file=stream)
        else:
            print(f"every rank, group and step within {TOLERANCE_BYTES // MiB} MiB", file=stream)
        print(file=stream)

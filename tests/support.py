"""Synthetic runs for unit tests of reporting and gate logic.

These are NOT measurements: they are built from a simple cost model so that renderers and
the gate's arithmetic can be tested with known inputs. Tests that claim anything about real
memory use the real pipeline (``--device cpu`` through torchrun) or committed GPU runs.
"""

from __future__ import annotations

from pathlib import Path

from memprobe.model.comparison import write_comparison_index
from memprobe.engines.sglang.layout import SGLangLayout as Layout, plan_groups
from memprobe.model.records import PlannedGroup, RankInfo, Reading, Run, RunRecord
from memprobe.model.run_files import write_run
from memprobe.model.comparison import Comparison, ScenarioRun
from memprobe.model.scenario import Scenario, ScenarioSet
from memprobe.model import steps

MiB = 1 << 20

DEFAULT_COSTS = {
    "cuda_context": 522 * MiB,
    "world": 2 * MiB,
    "groups_created": 0,
    "pynccl": 484 * MiB,
    "custom_allreduce": 38 * MiB,
    "first_use": 486 * MiB,
}

ENVIRONMENT = {
    "gpu_model": "NVIDIA H100 80GB HBM3",
    "gpu_count": 4,
    "driver": "580.159.04",
    "cuda": "13.0",
    "torch": "2.11.0+cu130",
    "nccl": "2.28.9",
    "nccl_env": {"NCCL_CUMEM_ENABLE": "0", "NCCL_NVLS_ENABLE": "0"},
    "sampling_mode": "process",
    "nvml_memory_api": "v2",
    "memprobe": "0.1.0",
    "host": "testhost",
    "python": "3.12.3",
}


def synthetic_run(
    scenario: Scenario,
    costs: dict[str, int] | None = None,
    rank_extra: dict[int, int] | None = None,
    group_extra: dict[tuple[str, str], int] | None = None,
    environment: dict | None = None,
) -> Run:
    """A complete run of ``scenario`` whose readings follow ``costs`` (bytes added per step).

    ``rank_extra`` adds bytes to every pynccl step of a rank (ranks differ in real runs);
    ``group_extra`` adds bytes to one ``(group, step)``.
    """
    costs = {**DEFAULT_COSTS, **(costs or {})}
    stack = scenario.resolved_stack
    plan = scenario.engine_ref.engine.plan_for(scenario.layout, stack)
    readings: list[Reading] = []
    for rank in range(scenario.layout.world_size):
        total = 0
        sequence = 0

        def add(step: str, group: str, delta: int, status: str = "ok", note: str = "") -> None:
            nonlocal total, sequence
            total += delta
            readings.append(Reading(rank=rank, sequence=sequence, step=step, group=group, status=status,
                                    primary_bytes=total, process_bytes=total, device_used_bytes=total + 483 * MiB,
                                    torch_reserved_bytes=0, other_gpus_bytes=0, elapsed_s=0.01, note=note))
            sequence += 1

        built = {g.name: g for g in plan.groups if not g.is_alias and g.name != "world"}
        kinds = scenario.engine_ref.engine.kind_names
        for group_name, step in steps.sequence(built, kinds):
            group = plan.group(group_name) if group_name else None
            extra = (group_extra or {}).get((group_name, step), 0)
            if step in (steps.START, steps.BEFORE, steps.END):
                add(step, group_name, 0)
            elif step in (steps.CUDA_CONTEXT, steps.WORLD, steps.GROUPS_CREATED):
                add(step, group_name, costs[step])
            elif step in kinds:
                if stack.communicators_for(group)[step]:
                    extra += (rank_extra or {}).get(rank, 0) if step == "pynccl" else 0
                    add(step, group_name, costs.get(step, MiB) + extra)  # another engine's kinds: 1 MiB each
                else:
                    add(step, group_name, 0, status="skipped", note="not in stack" if group.width > 1 else "width 1")
            elif group.width > 1:  # first_use
                add(step, group_name, costs[step] + extra)
            else:
                add(step, group_name, 0, status="skipped", note="width 1")
    record = RunRecord(
        run_id=f"synthetic-{scenario.name}",
        layout=scenario.layout.as_dict(),
        world_size=scenario.layout.world_size,
        stack=stack.as_dict(),
        device="cuda",
        warmup=scenario.warmup,
        env_preset=scenario.env_preset,
        env=dict(scenario.env),
        plan=[PlannedGroup(name=g.name, ranks=[list(r) for r in g.rank_lists], alias_of=g.alias_of,
                           communicators=stack.communicators_for(g)) for g in plan.groups],
        status="complete",
        scenario=scenario.name,
        engine=scenario.engine,
        definition=scenario.definition(),
        memprobe_version="0.1.0",
        created_utc="2026-11-27T00:00:00Z",
        environment=dict(environment or ENVIRONMENT),
        ranks=[RankInfo(rank=r, local_rank=r, host="testhost", device=f"cuda:{r}", sampling_mode="process")
               for r in range(scenario.layout.world_size)],
        wall_time_s=10.0,
    )
    return Run(record=record, readings=readings)


def headline_scenarios(tp: int = 4, ep: int = 2) -> ScenarioSet:
    return ScenarioSet(
        scenarios=(
            Scenario(name=f"tp{tp}", layout=Layout(tp=tp), stack="lean"),
            Scenario(name=f"tp{tp}-ep{ep}-full", layout=Layout(tp=tp, ep=ep), stack="full"),
            Scenario(name=f"tp{tp}-ep{ep}-lean", layout=Layout(tp=tp, ep=ep), stack="lean"),
        ),
        baseline=f"tp{tp}",
    )


def synthetic_comparison(scenario_set: ScenarioSet | None = None, **kwargs) -> Comparison:
    scenario_set = scenario_set or headline_scenarios()
    runs = [ScenarioRun(scenario=s, run=synthetic_run(s, **kwargs)) for s in scenario_set.scenarios]
    return Comparison(comparison_id="synthetic", baseline=scenario_set.baseline, runs=runs)


def write_comparison(path: Path, comparison: Comparison, scenario_set: ScenarioSet) -> Path:
    """Write ``comparison`` as a comparison folder, as ``memprobe compare`` does."""
    folders = {}
    for item in comparison.runs:
        folder = path / item.scenario.name
        folder.mkdir(parents=True, exist_ok=True)
        write_run(folder, item.run.record, item.run.readings)
        item.run.path = folder
        folders[item.scenario.name] = item.scenario.name
    write_comparison_index(path, comparison.comparison_id, scenario_set, folders)
    comparison.path = path
    return path

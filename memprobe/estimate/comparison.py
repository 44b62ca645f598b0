"""Estimated comparisons: every scenario of a set estimated on one topology, as a :class:`Comparison`."""

from __future__ import annotations

from typing import Any

from memprobe.errors import UsageError
from memprobe.estimate.calibration import Calibration
from memprobe.estimate.model import Topology, estimate_run
from memprobe.estimate.nccl import Network
from memprobe.model.comparison import Comparison, ScenarioRun
from memprobe.model.records import Run
from memprobe.model.scenario import ScenarioSet
from memprobe.model.stacks import GroupFlags


def estimate_comparison(scenario_set: ScenarioSet, calibration: Calibration, *, gpus_per_node: int | None,
                        nnodes: int | None, sglang_runs: dict[str, Run] | None = None,
                        network: Network = Network(), nccl_version: str | None = None) -> Comparison:
    """Every scenario estimated; ``sglang_runs`` (scenario name -> a CPU run of real SGLang) gives the flags
    of ``--engine sglang`` scenarios; ``network`` joins the nodes; ``nccl_version``: whose rules apply."""
    runs = []
    for scenario in scenario_set.scenarios:
        world = scenario.layout.world_size  # at most MAX_WORLD_SIZE: Layout refuses more
        topology = Topology.for_world(world, gpus_per_node, nnodes, network)
        flags, implementation = None, None
        if scenario.engine == "sglang":
            if not sglang_runs or scenario.name not in sglang_runs:
                raise UsageError(f"scenario {scenario.name}: --engine sglang needs SGLang's own flags (a CPU run)")
            flags, implementation = sglang_flags(sglang_runs[scenario.name])
        run = estimate_run(scenario, topology, calibration, flags, implementation, nccl_version)
        runs.append(ScenarioRun(scenario=scenario, run=run))
    label = "-vs-".join(dict.fromkeys(item.scenario.name for item in runs))
    return Comparison(comparison_id=f"estimate-{label}"[:120], baseline=scenario_set.baseline, runs=runs)


def sglang_flags(run: Run) -> tuple[dict[str, GroupFlags], str]:
    """Per group, the flags real SGLang passed to ``init_model_parallel_group`` (any rank's record), and the
    custom all-reduce it builds by default (read from its sources)."""
    flags: dict[str, GroupFlags] = {}
    for info in run.record.ranks:
        for group, decision in info.communicators.items():
            if "use_pynccl" in decision:
                flags[group] = GroupFlags(pynccl=_asked(decision, "use_pynccl"),
                                          custom_allreduce=_asked(decision, "use_custom_allreduce"))
    if not flags:
        raise UsageError(f"{run.path or run.record.run_id}: the SGLang run recorded no group flags "
                         f"(expected use_pynccl / use_custom_allreduce per group)")
    sglang: Any = run.record.environment.get("sglang") or {}
    sglang = sglang if isinstance(sglang, dict) else {}  # older runs recorded the version string alone
    implementation = str(sglang.get("custom_allreduce_default") or "v2")
    return flags, implementation


def _asked(decision: dict[str, str], flag: str) -> bool:
    """What SGLang asked a group for: the flag ``initialize_model_parallel`` passed ("None" is SGLang's default,
    on for both on CUDA), else (runs recorded before it was kept) the coordinator's attribute, which on a GPU is it."""
    passed = decision.get(f"passed_{flag}")
    if passed is not None:
        return passed in ("None", "True")
    return decision.get(flag) == "True"


__all__ = ["estimate_comparison", "sglang_flags"]

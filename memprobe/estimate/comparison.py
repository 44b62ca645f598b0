"""Estimated comparisons: every scenario of a set estimated on one topology, as a :class:`Comparison`."""

from __future__ import annotations

from memprobe.errors import UsageError
from memprobe.estimate.calibration import Calibration
from memprobe.estimate.model import Topology, estimate_run
from memprobe.estimate.nccl import Network
from memprobe.model.comparison import Comparison, ScenarioRun
from memprobe.model.records import Run
from memprobe.model.scenario import ScenarioSet


def estimate_comparison(scenario_set: ScenarioSet, calibration: Calibration, *, gpus_per_node: int | None,
                        nnodes: int | None, sglang_runs: dict[str, Run] | None = None,
                        network: Network = Network(), nccl_version: str | None = None,
                        nccl_why: str = "") -> Comparison:
    """Every scenario estimated; ``sglang_runs`` (scenario name -> a CPU run of the installed engine) gives the
    flags of an installed engine's scenarios (``--engine sglang``); ``network`` joins the nodes; ``nccl_version``:
    whose rules apply, ``nccl_why`` where that release came from (recorded beside it)."""
    runs = []
    for scenario in scenario_set.scenarios:
        world = scenario.layout.world_size  # at most MAX_WORLD_SIZE: Layout refuses more
        topology = Topology.for_world(world, gpus_per_node, nnodes, network)
        stack = None
        ref = scenario.engine_ref
        if ref.installed:
            if not sglang_runs or scenario.name not in sglang_runs:
                raise UsageError(f"scenario {scenario.name}: --engine {ref.name} needs {ref.engine.label}'s own flags "
                                 f"(a CPU run)")
            stack = ref.engine.learn_stack(sglang_runs[scenario.name])
        run = estimate_run(scenario, topology, calibration, stack, nccl_version, nccl_why)
        runs.append(ScenarioRun(scenario=scenario, run=run))
    label = "-vs-".join(dict.fromkeys(item.scenario.name for item in runs))
    return Comparison(comparison_id=f"estimate-{label}"[:120], baseline=scenario_set.baseline, runs=runs)

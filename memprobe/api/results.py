"""What the API functions return besides the model's own values (a Comparison, a ScenarioRun), and the helpers that
read per-rank figures out of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from memprobe.errors import OptionTypeError, UsageError

if TYPE_CHECKING:  # the values' types; imported where used, so that `memprobe estimate` starts fast
    from memprobe.model.comparison import Comparison, ScenarioRun
    from memprobe.engines.api import Decision, Plan as GroupsPlan
    from memprobe.engines.stacks import Stack

__all__ = ["AssumedFacts", "BaselineUpdate", "ListDecisions", "Plan", "communicators", "is_estimate", "total_after_first_use"]


# ------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ListDecisions:
    """What one group's rank lists that sit alike (as many nodes each) build, per communicator kind:
    :meth:`memprobe.engines.api.Engine.decide` on the assumed facts."""

    nodes: int  # nodes each of these lists spans
    lists: int  # how many of the group's lists
    decisions: tuple["Decision", ...]


@dataclass(frozen=True)
class AssumedFacts:
    """The machine ``plan`` decides on when it looks at no GPU: what ``estimate`` assumes by default."""

    gpu_model: str  # the packaged calibration's GPU
    compute_capability: int
    sm_count: int
    gpus_per_node: int  # NVSwitch-joined, fully NVLink-connected
    env_preset: str
    nccl: str = ""  # the NCCL release the estimate's rules would model by default
    nccl_why: str = ""  # where that release comes from (the installed torch's, the engine's pin, the calibration's)

    def describe(self) -> str:
        major, minor = divmod(self.compute_capability, 10)
        nccl = f", NCCL {self.nccl} ({self.nccl_why})" if self.nccl else ""
        return (f"decisions ASSUMED as the estimate assumes by default, no GPU looked at: {self.gpu_model} "
                f"(sm {major}.{minor}), nodes of {self.gpus_per_node} NVSwitch-joined GPUs, env preset "
                f"{self.env_preset}{nccl}")


@dataclass(frozen=True)
class Plan:
    """The groups an engine builds for a layout, the stack's communicator flags for each, and what each group
    builds (its decisions, per kind of rank list) on the assumed facts."""

    groups: "GroupsPlan"
    stack: "Stack"
    decisions: dict[str, tuple[ListDecisions, ...]] = field(default_factory=dict)  # group name -> its lists' kinds
    assumed: Optional[AssumedFacts] = None


@dataclass(frozen=True)
class BaselineUpdate:
    """A baseline file written by :func:`make_baseline`: its document, what changed, notes on dropped thresholds."""

    path: Path
    document: dict[str, Any]
    changed: bool  # False: the file already held exactly this
    created: bool  # the file did not exist before
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ranks(self) -> int:
        return sum(len(scenario["ranks"]) for scenario in self.document["scenarios"].values())


# ------------------------------------------------------------------------------------------- per-rank figures


def is_estimate(value: "Comparison | ScenarioRun | Any") -> bool:
    """Whether bytes were estimated, not measured (every run of a comparison)."""
    from memprobe.model.memory_kind import ESTIMATED_GPU, memory_kind

    runs = [item.run for item in value.runs] if hasattr(value, "runs") else [getattr(value, "run", value)]
    return all(memory_kind(one) == ESTIMATED_GPU for one in runs)


def total_after_first_use(value: "Comparison | ScenarioRun", scenario: Optional[str] = None) -> dict[int, int]:
    """Per rank, the bytes a scenario's run holds once every group has run its first collective (the gate's
    ``total_after_first_use``): ``{rank: bytes}``. ``scenario``: which run of a comparison (default: its last)."""
    from memprobe.analysis.attribution import components_by_rank

    item = _scenario_run(value, scenario)
    return {rank: total for rank, parts in components_by_rank(item.run).items()
            if (total := parts.get("total_after_first_use")) is not None}


def communicators(value: "Comparison | ScenarioRun", scenario: Optional[str] = None) -> dict[int, dict[str, dict[str, str]]]:
    """Per rank and group, what became of each communicator the stack may build: ``{0: {"moe_ep": {"pynccl":
    "skipped: not in stack", "custom_allreduce": "built v2 (...)"}}}`` (the worker's own account)."""
    item = _scenario_run(value, scenario)
    return {info.rank: info.communicators for info in item.run.record.ranks}


def _scenario_run(value: "Comparison | ScenarioRun", scenario: Optional[str]) -> "ScenarioRun":
    from memprobe.model.comparison import Comparison, ScenarioRun

    if isinstance(value, ScenarioRun):
        return value
    if not isinstance(value, Comparison):
        raise OptionTypeError(f"expected a Comparison or a ScenarioRun (what estimate, compare, run and load return), "
                              f"got {type(value).__name__}")
    if scenario is None:
        return value.runs[-1]
    try:
        return value.get(scenario)
    except KeyError:
        raise UsageError(f"no scenario {scenario!r}; there are {', '.join(value.names())}") from None

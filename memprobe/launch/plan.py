"""Which scenarios share one torchrun launch, and the environment each one adds.

A launch starts one launcher per rank with one environment; the launcher imports torch once and
forks a measuring process per scenario, which applies its scenario's own variables before
anything reads them. That is only faithful for variables read after the fork, when NCCL, CUDA
or a communicator starts: those below. Scenarios whose environments differ in anything else
(``PYTHONPATH`` of another SGLang installation, ``LD_PRELOAD``, ...) or in their number of ranks
get launches of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from memprobe.model.scenario import Scenario

# Read when NCCL, CUDA, a process group or a communicator starts, all after the fork.
READ_AFTER_FORK = ("NCCL_", "TORCH_NCCL_", "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_MODULE_LOADING", "TORCH_SYMM_MEM_",
                   "NVSHMEM_", "SGLANG_", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "MEMPROBE_TEST_FAULT")


@dataclass
class Member:
    """One scenario of a launch: where its run goes and the variables it sets on top of the launch's."""

    scenario: Scenario
    run_dir: Path
    environment: dict[str, str]  # everything its measuring processes see (recorded in run.json)
    overrides: dict[str, str] = field(default_factory=dict)


@dataclass
class PlannedLaunch:
    members: list[Member]
    environment: dict[str, str]  # what torchrun and every launcher start with

    @property
    def scenarios(self) -> list[Scenario]:
        return [member.scenario for member in self.members]


def _differing(first: dict[str, str], second: dict[str, str]) -> set[str]:
    return {key for key in first.keys() | second.keys() if first.get(key) != second.get(key)}


def can_share(first: Member, second: Member) -> bool:
    return (first.scenario.layout.world_size == second.scenario.layout.world_size
            and all(key.startswith(READ_AFTER_FORK) for key in _differing(first.environment, second.environment)))


def plan_launches(members: list[Member]) -> list[PlannedLaunch]:
    """Members in as few launches as can share one, each launch keeping the members' order."""
    groups: list[list[Member]] = []
    for member in members:
        group = next((g for g in groups if all(can_share(member, other) for other in g)), None)
        if group is None:
            groups.append([member])
        else:
            group.append(member)
    return [_launch_of(group) for group in groups]


def _launch_of(members: list[Member]) -> PlannedLaunch:
    first = members[0].environment
    common = {key: value for key, value in first.items() if all(m.environment.get(key) == value for m in members)}
    for member in members:
        member.overrides = {key: value for key, value in member.environment.items() if common.get(key) != value}
    return PlannedLaunch(members=members, environment=common)

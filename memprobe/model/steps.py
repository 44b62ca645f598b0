"""The sequence of steps a worker takes, defined once; the communicator steps are the engine's kinds.

Per rank: ``start`` (before CUDA), ``cuda_context``, ``world``; then for every built group in the
engine's order ``before``, ``groups_created`` and one step per communicator kind of the engine (SGLang:
``pynccl``, ``custom_allreduce``); then ``first_use`` for the world and every built group; finally ``end``.
The recorder, the estimate, the supervisor's progress count, the reports and the test helpers all take it
from here, with the kinds from :mod:`memprobe.engines`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

START, CUDA_CONTEXT, WORLD, END = "start", "cuda_context", "world", "end"
BEFORE, GROUPS_CREATED, FIRST_USE = "before", "groups_created", "first_use"

#: Steps of the process itself, before any group exists (recorded with an empty group name).
PROCESS_STEPS: tuple[str, ...] = (START, CUDA_CONTEXT)
#: Every step that is no engine's communicator kind, in the order a worker first takes it.
GENERIC_STEPS: tuple[str, ...] = (*PROCESS_STEPS, WORLD, BEFORE, GROUPS_CREATED, FIRST_USE, END)


def group_steps(kinds: Sequence[str]) -> tuple[str, ...]:
    """Steps repeated for every built group (world excluded), in order."""
    return (BEFORE, GROUPS_CREATED, *kinds)


def group_init_steps(kinds: Sequence[str]) -> tuple[str, ...]:
    """The group steps that add memory of the group's own (``before`` only marks where it starts)."""
    return (GROUPS_CREATED, *kinds)


def is_group_init_step(step: str) -> bool:
    """``groups_created`` or a communicator kind: whatever a group's own step is that is not generic."""
    return step == GROUPS_CREATED or step not in GENERIC_STEPS


def steps(kinds: Sequence[str]) -> tuple[str, ...]:
    """Every step name of an engine with ``kinds``, in the order a worker first takes it."""
    return (*PROCESS_STEPS, WORLD, *group_steps(kinds), FIRST_USE, END)


def sequence(built_groups: Iterable[str], kinds: Sequence[str]) -> list[tuple[str, str]]:
    """``(group, step)`` pairs in the order one rank records them; ``built_groups`` excludes the world."""
    groups = [name for name in built_groups if name != WORLD]
    order = [("", step) for step in PROCESS_STEPS] + [(WORLD, WORLD)]
    for group in groups:
        order += [(group, step) for step in group_steps(kinds)]
    order += [(group, FIRST_USE) for group in (WORLD, *groups)]
    return order + [("", END)]

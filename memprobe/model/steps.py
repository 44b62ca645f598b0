"""The sequence of steps a worker takes, defined once.

Per rank: ``start`` (before CUDA), ``cuda_context``, ``world``; then for every built group in
SGLang's order ``before``, ``groups_created``, ``pynccl``, ``custom_allreduce``; then
``first_use`` for the world and every built group; finally ``end``. The engines, the
supervisor's progress count, the reports and the test helpers all take it from here.
"""

from __future__ import annotations

from typing import Iterable

START, CUDA_CONTEXT, WORLD, END = "start", "cuda_context", "world", "end"
BEFORE, GROUPS_CREATED, PYNCCL, CUSTOM_ALLREDUCE, FIRST_USE = (
    "before", "groups_created", "pynccl", "custom_allreduce", "first_use")

#: Steps of the process itself, before any group exists (recorded with an empty group name).
PROCESS_STEPS: tuple[str, ...] = (START, CUDA_CONTEXT)
#: Steps repeated for every built group (world excluded), in order.
GROUP_STEPS: tuple[str, ...] = (BEFORE, GROUPS_CREATED, PYNCCL, CUSTOM_ALLREDUCE)
#: The group steps that add memory of the group's own (``before`` only marks where it starts).
GROUP_INIT_STEPS: tuple[str, ...] = GROUP_STEPS[1:]
#: The communicators a stack may build per group.
COMMUNICATOR_STEPS: tuple[str, ...] = (PYNCCL, CUSTOM_ALLREDUCE)
#: Every step name, in the order a worker first takes it.
STEPS: tuple[str, ...] = (*PROCESS_STEPS, WORLD, *GROUP_STEPS, FIRST_USE, END)


def sequence(built_groups: Iterable[str]) -> list[tuple[str, str]]:
    """``(group, step)`` pairs in the order one rank records them; ``built_groups`` excludes the world."""
    groups = [name for name in built_groups if name != WORLD]
    order = [("", step) for step in PROCESS_STEPS] + [(WORLD, WORLD)]
    for group in groups:
        order += [(group, step) for step in GROUP_STEPS]
    order += [(group, FIRST_USE) for group in (WORLD, *groups)]
    return order + [("", END)]

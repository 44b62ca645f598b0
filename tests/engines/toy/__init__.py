"""A test-only third engine: two groups (the world and rank pairs), one communicator kind of its own (a scratch
buffer sized by its own rule), registered by one line (``MEMPROBE_ENGINES=tests.engines.toy:ENGINE``). It proves that
memprobe knows engines only through :mod:`memprobe.engines`: nothing outside this folder names it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from memprobe.engines.api import (
    REFERENCE, Allocation, Decision, Engine, Facts, GroupPlan, Kind, LayoutBase, Plan, Verdict, flag_field,
)
from memprobe.engines.stacks import Stack, new_stack
from memprobe.errors import UsageError

MIB = 1024 * 1024
SCRATCH = Kind("scratch", "scratch buffer")
GROUP_ORDER = ("world", "pairs")


@dataclass(frozen=True)
class ToyLayout(LayoutBase):
    tp: int = flag_field(flag="--tp", help="Ranks per ring, in pairs.")
    # a width no option of memprobe's declares: given as --layout rings=N (the API: layout=("rings=N",))
    rings: int = flag_field(flag=None, help="Rings of tp ranks each.")

    def check(self) -> None:
        if self.tp % 2:
            raise UsageError(f"--tp {self.tp}: the toy engine pairs its ranks; give an even number")

    @property
    def world_size(self) -> int:
        return self.tp * self.rings


def scratch_bytes(width: int) -> int:
    """The toy's size rule: one MiB per member of the group."""
    return MIB * width


class ToyEngine(Engine):
    name = "toy"
    label = "Toy"
    names = {"toy-ref": REFERENCE}
    layout_type = ToyLayout
    group_order = GROUP_ORDER
    kinds = (SCRATCH,)
    builders = {REFERENCE: "tests.engines.toy.builder:ToyBuilder"}
    default_stack = "on"
    stack_pair = ("on", "off")
    width_1_reason = "the toy builds none"

    def plan(self, layout: LayoutBase) -> Plan:
        world = tuple(range(layout.world_size))
        pairs = tuple(world[index:index + 2] for index in range(0, len(world), 2))
        return Plan(layout=layout, groups=(GroupPlan("world", (world,)), GroupPlan("pairs", pairs)))

    def stacks(self) -> Mapping[str, Stack]:
        return {"on": new_stack(self, "on", {"pairs": {"scratch": True}}),
                "off": new_stack(self, "off", {"pairs": {"scratch": False}})}

    @property
    def gpu_kinds(self) -> tuple[str, ...]:
        return ()  # the scratch buffer is built on --device cpu too (in host memory)

    def decide(self, group: GroupPlan, stack: Any, facts: Facts) -> list[Decision]:
        wanted = stack.flags_for(group.name)[SCRATCH.name]
        return [self.guard(group, SCRATCH.name, wanted, facts) or Decision(group.name, SCRATCH.name, Verdict.BUILT)]

    def sizes(self, decision: Decision, facts: Facts) -> list[Allocation]:
        return [Allocation("scratch", scratch_bytes(facts.width), "torch_cache", "tests/engines/toy: scratch_bytes")]


ENGINE = ToyEngine()

"""The toy engine's worker side: torch's groups from the template, and its scratch buffer, really allocated."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from memprobe.engines.api import Decision, Facts, GroupPlan
from memprobe.engines.builder import GroupBuilder

from tests.engines.toy import scratch_bytes


class ToyBuilder(GroupBuilder):
    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self.buffers: list[torch.Tensor] = []

    def build_communicator(self, group: GroupPlan, ranks: tuple[int, ...], decision: Decision, facts: Facts) -> Decision:
        nbytes = scratch_bytes(len(ranks))
        device = self.recorder.torch_device or torch.device("cpu")
        self.buffers.append(torch.ones(nbytes, dtype=torch.uint8, device=device))  # touched: resident on CPU too
        return replace(decision, planned_bytes=nbytes)

    def destroy(self) -> None:
        self.buffers.clear()

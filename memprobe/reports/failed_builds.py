"""The communicators a run tried to build and could not: one note line per failed step, so that a reader never takes
a failed communicator's 0 MiB for a cheap one (the engine goes on without it, so the run itself completes)."""

from __future__ import annotations

from dataclasses import dataclass

from memprobe.model.records import Run
from memprobe.units import UNIT

ERROR_CHARS = 100  # the first error's text is cut here: the whole of it is in run.json


@dataclass(frozen=True)
class FailedBuild:
    """One step (``group/kind``) that failed on some ranks of one run, with the first failing rank's error."""

    step: str
    ranks: tuple[int, ...]
    ranks_recorded: int
    world_size: int
    error: str

    def ranks_text(self) -> str:
        """``2 of 2 ranks``; ``1 of the 2 ranks recorded here (world 4)`` for a run whose other ranks are elsewhere."""
        if self.ranks_recorded == self.world_size:
            return f"{len(self.ranks)} of {self.world_size} ranks"
        return f"{len(self.ranks)} of the {self.ranks_recorded} ranks recorded here (world {self.world_size})"


def failed_builds(run: Run) -> list[FailedBuild]:
    """Every step some rank of ``run`` recorded as failed, in the order the ranks recorded them."""
    failed: dict[str, list[tuple[int, str]]] = {}
    for info in sorted(run.record.ranks, key=lambda info: info.rank):
        for group, decisions in info.communicators.items():
            for kind, word in decisions.items():
                if word.startswith("failed: "):  # Decision.text of Verdict.FAILED
                    failed.setdefault(f"{group}/{kind}", []).append((info.rank, word[len("failed: "):]))
    return [FailedBuild(step, tuple(rank for rank, _ in ranks), len(run.record.ranks), run.record.world_size,
                        ranks[0][1]) for step, ranks in failed.items()]


def short_error(text: str) -> str:
    """The error on one line, cut to :data:`ERROR_CHARS`."""
    line = " ".join(text.split())
    return line if len(line) <= ERROR_CHARS else line[:ERROR_CHARS - 1].rstrip() + "…"


def run_notes(run: Run) -> list[str]:
    """One line per failed step of one run."""
    return [f"failed to build (0 {UNIT}: nothing built, not a cheap build): {failed.step} on {failed.ranks_text()}: "
            f"{short_error(failed.error)}" for failed in failed_builds(run)]


def comparison_notes(runs: list[tuple[str, Run]]) -> list[str]:
    """One line per failed step across a comparison's ``(scenario name, run)`` pairs, naming the scenarios it
    failed in, on how many of their ranks, and the first error."""
    by_step: dict[str, list[tuple[str, FailedBuild]]] = {}
    for name, run in runs:
        for failed in failed_builds(run):
            by_step.setdefault(failed.step, []).append((name, failed))
    lines = []
    for step, found in by_step.items():
        counts = {failed.ranks_text() for _, failed in found}
        if len(counts) == 1:
            where = f"on {counts.pop()} of {_names([name for name, _ in found], len(runs))}"
        else:
            where = "on " + ", ".join(f"{failed.ranks_text()} of {name}" for name, failed in found)
        lines.append(f"failed to build (0 {UNIT}: nothing built, not a cheap build): {step} {where}: {short_error(found[0][1].error)}")
    return lines


def _names(names: list[str], scenarios: int) -> str:
    if len(names) == scenarios and scenarios > 1:
        return "every scenario"
    return ", ".join(names)


"""``--split``: every step's bytes in two measured parts: torch's caching allocator (the change of
``torch.cuda.memory_reserved`` over the step) and everything else (NCCL, the CUDA driver, IPC mappings, custom
all-reduce buffers allocated outside torch). Both are readings, not formulas: the parts add up to the step."""

from __future__ import annotations

from typing import IO


from memprobe.analysis.attribution import Split, skipped_by_rank, splits_by_rank
from memprobe.model.records import Run
from memprobe.reports._format import console_for, print_table
from memprobe.reports._model import plan_of
from memprobe.reports.run_table import component_rows, component_table
from memprobe.units import NA, UNIT, mib

TORCH_LABEL = "torch cache"
REST_LABEL = "rest (NCCL, driver, IPC)"


def _cell(values: list[int | None]) -> str:
    """One value when every rank agrees, else ``low..high``; ``n/a`` when no rank's value is known."""
    known = [value for value in values if value is not None]
    if not known:
        return NA
    low, high = min(known), max(known)
    text = mib(low) if low == high else f"{mib(low)}..{mib(high)}"
    return text if len(known) == len(values) else f"{text} ({len(known)}/{len(values)} ranks)"


def render_split(run: Run, stream: IO[str], *, width: int = 120, per_rank: bool = False) -> None:
    """A row per step of the run table: the bytes it added, the torch-cache part and the rest. Across ranks
    (``low..high`` where ranks differ) or, with ``per_rank``, ``total = torch + rest`` per rank."""
    splits = splits_by_rank(run)
    with console_for(stream, width) as console:
        if not splits:
            console.print("no readings: nothing to split")
            return
        console.print(f"bytes each step added, split into {TORCH_LABEL} (change of torch-reserved bytes) and the rest; "
                      f"{UNIT} = 2^20 bytes", soft_wrap=True)
        totals_by_rank = {rank: {k: s.total for k, s in parts.items()} for rank, parts in splits.items()}
        rows, totals, _ = component_rows(plan_of(run), totals_by_rank, skipped_by_rank(run), run.record.device)
        ranks = sorted(splits)
        table = component_table([f"rank {rank}: total = torch + rest\n{UNIT}" for rank in ranks] if per_rank
                                else [f"{label}\n{UNIT}" for label in ("total", TORCH_LABEL, REST_LABEL)])
        for section in (rows, totals):
            for row in section:
                cells = [splits[rank].get(row.key, Split(None, None)) for rank in ranks]
                table.add_row(row.label, *(_per_rank_cells(cells) if per_rank else _range_cells(cells)))
            table.add_section()
        print_table(console, table)
        if all(s.torch_cache is None for parts in splits.values() for s in parts.values()):
            console.print("torch-reserved bytes were not recorded (CPU run): the split is not available", soft_wrap=True)


def _range_cells(cells: list[Split]) -> list[str]:
    return [_cell([c.total for c in cells]), _cell([c.torch_cache for c in cells]), _cell([c.rest for c in cells])]


def _per_rank_cells(cells: list[Split]) -> list[str]:
    return [f"{mib(c.total)} = {mib(c.torch_cache)} + {mib(c.rest)}" for c in cells]

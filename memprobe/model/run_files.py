"""A run folder on disk: :func:`load_run` reads ``run.json`` and ``readings.csv`` (or, for a run that never
finished, what its ranks streamed) and checks they are whole; :func:`write_run` writes them."""

from __future__ import annotations

import json
from pathlib import Path

from memprobe.errors import DamagedInput, UsageError
from memprobe.model.completeness import check_whole
from memprobe.model.events import load_stream
from memprobe.model.records import (Reading, Run, RunRecord, RunStatus, atomic_write_text, readings_by_class_from_csv,
                                    readings_to_csv)


def load_run(run_dir: str | Path) -> Run:
    """Load a run folder. Raises :class:`UsageError` with one line when it is missing or corrupt."""
    run_dir = Path(run_dir)
    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise UsageError(f"{run_dir} is not a memprobe run folder (no run.json)")
    try:
        data = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: not UTF-8, not JSON
        why = "nested too deeply" if isinstance(error, RecursionError) else error
        raise DamagedInput(f"{record_path}: unreadable or not JSON ({why})") from None
    if not isinstance(data, dict):
        raise DamagedInput(f"{record_path}: not a memprobe run record")
    record = RunRecord.from_dict(data, str(record_path))
    readings_path = run_dir / "readings.csv"
    if readings_path.is_file():
        try:
            text = readings_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DamagedInput(f"{readings_path}: unreadable or not UTF-8 text ({error})") from None
        readings, classes = readings_by_class_from_csv(text, str(readings_path))
    elif record.status == RunStatus.COMPLETE:
        raise DamagedInput(f"{readings_path} does not exist although {record_path} says the run completed")
    else:
        readings, classes = [], {}
        for stream in sorted((run_dir / "ranks").glob("rank-*.jsonl")):
            readings.extend(load_stream(stream)[1])
    check_whole(record, readings, str(readings_path), classes)
    return Run(record=record, readings=readings, path=run_dir, classes=classes)


def write_run(run_dir: Path, record: RunRecord, readings: list[Reading] | None) -> None:
    if readings is not None:
        atomic_write_text(run_dir / "readings.csv", readings_to_csv(readings))
    atomic_write_text(run_dir / "run.json", record.to_json())

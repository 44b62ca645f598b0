"""Typed records of a run and the files they live in.

A run folder holds:

* ``run.json``: the :class:`RunRecord` (layout, stack, plan, environment, per-rank info, status);
* ``readings.csv``: one row per rank and step (:data:`READING_COLUMNS`), bytes as integers;
* ``ranks/rank-NNNNN.jsonl``: what each worker streamed as it went (kept so that a failed
  or interrupted run loses no finished reading).

Everything here is plain data: bytes are ``int``, never floats or MiB.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterable

from memprobe import engines
from memprobe.errors import DamagedInput, OutputError
from memprobe.model.steps import GENERIC_STEPS

SCHEMA_VERSION = 1

# What the parent and its workers agree on besides the files: the variables that mark a run's processes.
RUN_TOKEN_VARIABLE = "MEMPROBE_RUN_TOKEN"  # every process of one launch (found again through /proc/PID/environ)
CONCURRENT_VARIABLE = "MEMPROBE_CONCURRENT_TOKEN"  # every process of a launch whose scenarios run side by side
TORCHRUN_PID_VARIABLE = "MEMPROBE_TORCHRUN_PID"  # torchrun's PID, the launchers' parent (memprobe.launch.guard)
WORKER_CONFIG = "worker-config.json"  # what each worker measures, written into the run folder by the parent
WORKERS_LOG = "workers.log"  # what the scenario's measuring processes on this node printed
NCCL_LOG_FOLDER = "nccl"  # --nccl-log: NCCL_DEBUG_FILE=<run>/nccl/%h.%p.log, one NCCL debug log per process


def process_carries(pid: int, variable: str, value: str) -> bool:
    """Whether process ``pid`` has ``variable=value`` in its environment (same host, readable /proc/PID/environ;
    a PID may have been reused since it was read, so the mark is checked again each time)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as stream:
            return f"{variable}={value}".encode() in stream.read().split(b"\0")
    except OSError:
        return False



class Word(StrEnum):
    """A ``str`` Enum that is its bare word everywhere: in JSON, CSV, f-strings and ``repr`` (so a message that
    shows one with ``!r`` reads as it did when these were plain strings)."""

    def __repr__(self) -> str:
        return repr(self.value)


class StepStatus(Word):
    """A reading's ``status``: the step ran, was not part of this run, or ran and failed."""

    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


class RunStatus(Word):
    """``run.json``'s ``status``: written ``running`` before the launch, then one of the other two."""

    RUNNING = "running"
    COMPLETE = "complete"  # every rank took every reading
    INCOMPLETE = "incomplete"  # a rank failed, went silent, or the run was interrupted: ``failure`` says which


class ScenarioStatus(Word):
    """Where the parent's supervisor is with one scenario of a launch: waiting (for its turn) -> running -> done | failed."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


STATUSES: tuple[str, ...] = tuple(StepStatus)
SAMPLING_MODES: tuple[str, ...] = ("process", "device", "host_rss_anon", "host_rss")  # host_rss: earlier --device cpu runs


@dataclass(frozen=True)
class Reading:
    """One sample on one rank, taken after a step completed on every rank.

    ``primary_bytes`` is the figure reports use: the rank's own per-process GPU memory
    (``process`` mode), the device's used memory when per-process figures are unavailable
    (``device`` mode), or the rank's own host RSS in ``--device cpu`` runs (``host_rss_anon`` mode:
    anonymous and shared-memory pages; ``host_rss``, the whole resident set, in runs of an earlier memprobe).
    ``None`` means "not available", never zero.
    """

    rank: int
    sequence: int
    step: str
    group: str
    status: str
    primary_bytes: int | None
    process_bytes: int | None
    device_used_bytes: int | None
    torch_reserved_bytes: int | None
    other_gpus_bytes: int | None
    elapsed_s: float
    note: str = ""

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


READING_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Reading))
_OPTIONAL_INT_COLUMNS = ("primary_bytes", "process_bytes", "device_used_bytes", "torch_reserved_bytes", "other_gpus_bytes")
_OPTIONAL_INT_INDEX = tuple((READING_COLUMNS.index(column), column) for column in _OPTIONAL_INT_COLUMNS)


@dataclass
class RankInfo:
    rank: int
    local_rank: int = 0
    host: str = ""
    pid: int = 0
    device: str = ""  # "cuda:0" or "cpu"
    gpu_uuid: str = ""
    gpu_name: str = ""
    sampling_mode: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    nccl_version: str = ""
    nccl_library: str = ""
    communicators: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Failure:
    rank: int | None
    group: str
    step: str
    message: str
    last_lines: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = f"rank {self.rank}" if self.rank is not None else "the launcher"
        at = f" at {self.group}/{self.step}" if self.step else ""
        return f"{where} failed{at}: {self.message}"


@dataclass(frozen=True)
class PlannedGroup:
    """One group of ``run.json``'s ``plan``: its rank lists, the group it aliases, the communicators it builds."""

    name: str
    ranks: list[list[int]]
    alias_of: str | None = None
    communicators: dict[str, bool] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return len(self.ranks[0]) if self.ranks else 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PlannedGroup":
        return cls(name=str(data["name"]), ranks=[list(ranks) for ranks in data.get("ranks") or []],
                   alias_of=data.get("alias_of"), communicators=dict(data.get("communicators") or {}))


@dataclass(frozen=True)
class RunTimings:
    """``run.json``'s ``timings``: where a run's time went (:mod:`memprobe.model.timings` says how it is measured)."""

    phases: dict[str, float | None]  # phase -> seconds on the slowest local rank; None: it never happened
    steps: list[tuple[str, str, float]]  # (group, step, seconds) of every step after the CUDA context
    total_s: float

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "RunTimings | None":
        if not data:  # a run made before memprobe recorded timings, or one still running
            return None
        return cls(phases=dict(data["phases"]), steps=[tuple(item) for item in data["steps"]], total_s=data["total_s"])


@dataclass(frozen=True)
class LaunchInfo:
    """``run.json``'s ``launch``: the torchrun launch a run shared with other scenarios, its jobs and folder."""

    scenarios: tuple[str, ...]
    jobs: int
    folder: str

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "LaunchInfo | None":
        if not data:  # a run made before one launch measured several scenarios
            return None
        return cls(scenarios=tuple(data["scenarios"]), jobs=int(data["jobs"]), folder=str(data["folder"]))


@dataclass
class RunRecord:
    run_id: str
    layout: dict[str, int]
    world_size: int
    stack: dict[str, Any]
    device: str
    warmup: str
    env_preset: str
    env: dict[str, str]
    plan: list[PlannedGroup]
    status: RunStatus = RunStatus.RUNNING
    scenario: str = ""
    engine: str = "memprobe"
    definition: dict[str, Any] = field(default_factory=dict)  # the scenario's identity (Scenario.definition)
    memprobe_version: str = ""
    created_utc: str = ""
    command: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    ranks: list[RankInfo] = field(default_factory=list)
    failure: Failure | None = None
    wall_time_s: float | None = None
    gpu_release_s: float | None = None  # seconds waited after the workers stopped until NVML no longer listed them
    timings: RunTimings | None = None
    results_at: dict[str, Any] | None = None  # on a node other than 0: host and folder of the gathered results
    launch: LaunchInfo | None = None
    source: str = "measured"  # "estimated": made by memprobe estimate from NCCL's rules, never measured
    schema_version: int = SCHEMA_VERSION

    @property
    def stack_name(self) -> str:
        return str(self.stack.get("name", ""))

    def as_document(self) -> dict[str, Any]:
        """run.json's object (also the JSON export's ``run``): no timings or launch is ``{}``, as it always was."""
        document = asdict(self)
        for name in ("timings", "launch"):
            if document[name] is None:
                document[name] = {}
        return document

    def to_json(self) -> str:
        return json.dumps(self.as_document(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "run.json") -> "RunRecord":
        try:
            data = dict(data)
            if data.get("schema_version") != SCHEMA_VERSION:
                raise DamagedInput(f"{source}: schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
            _check_record_types(data, source)
            data["ranks"] = [RankInfo(**rank) for rank in data.get("ranks", [])]
            data["plan"] = [PlannedGroup.from_dict(group) for group in data["plan"]]
            data["timings"] = RunTimings.from_dict(data.get("timings"))
            data["launch"] = LaunchInfo.from_dict(data.get("launch"))
            if data.get("status", RunStatus.RUNNING) not in tuple(RunStatus):
                raise DamagedInput(f"{source}: status {data['status']!r} is not one of {', '.join(RunStatus)}")
            data["status"] = RunStatus(data.get("status", RunStatus.RUNNING))
            if data.get("failure") is not None:
                data["failure"] = Failure(**data["failure"])
            known = {f.name for f in fields(cls)}
            return cls(**{key: value for key, value in data.items() if key in known})
        except (TypeError, KeyError) as error:
            raise DamagedInput(f"{source}: not a memprobe run record ({error})") from None


# run.json's fields and the JSON types they hold (None: may be null); a field of another type is a damaged file
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "layout": (dict,), "world_size": (int,), "stack": (dict,), "device": (str,), "warmup": (str,),
    "env_preset": (str,), "env": (dict,), "plan": (list,), "scenario": (str,), "engine": (str,), "definition": (dict,),
    "memprobe_version": (str,), "created_utc": (str,), "command": (list,), "environment": (dict,), "ranks": (list,),
    "failure": (dict, type(None)), "wall_time_s": (int, float, type(None)), "gpu_release_s": (int, float, type(None)),
    "timings": (dict, type(None)), "results_at": (dict, type(None)), "launch": (dict, type(None)), "source": (str,),
}


def _check_record_types(data: dict[str, Any], source: str) -> None:
    for name, types in _RECORD_TYPES.items():
        value = data.get(name)
        if name in data and (not isinstance(value, types) or isinstance(value, bool)):
            raise DamagedInput(f"{source}: {name} must be {' or '.join(t.__name__ for t in types)}, got {value!r:.60}")
    for name, value in {**data.get("layout", {}), "world_size": data.get("world_size", 1)}.items():
        if name != "world_size" and isinstance(value, (bool, str)):
            continue  # a switch or a name of the engine's layout (vLLM's --moe, --all2all-backend): its type checks it
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DamagedInput(f"{source}: {'layout.' if name != 'world_size' else ''}{name} must be a whole number >= 1, "
                               f"got {value!r:.60}")
    if not all(isinstance(value, str) for value in data.get("env", {}).values()):
        raise DamagedInput(f"{source}: env must map names to strings")


@dataclass
class Run:
    """A run folder loaded into memory."""

    record: RunRecord
    readings: list[Reading]
    path: Path | None = None
    #: An estimate's ranks whose groups sit alike share one representative's readings: rank -> representative.
    classes: dict[int, int] = field(default_factory=dict)

    @property
    def ranks(self) -> list[int]:
        if self.classes:
            return sorted(self.classes)
        return sorted({reading.rank for reading in self.readings})

    def all_readings(self) -> list[Reading]:
        """Every rank's readings, those of shared representatives copied under each rank's number."""
        if not self.classes:
            return list(self.readings)
        by_rank: dict[int, list[Reading]] = {}
        for reading in self.readings:
            by_rank.setdefault(reading.rank, []).append(reading)
        return [reading if rank == representative else replace(reading, rank=rank)
                for rank, representative in sorted(self.classes.items()) for reading in by_rank[representative]]


# --------------------------------------------------------------------------- files


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file.

    Raises :class:`OutputError` (one line) when it cannot: a full disk (ENOSPC from write or fsync), a
    read-only or vanished folder; the old file, if any, is left as it was and the temporary is removed."""
    atomic_write_stream(path, lambda stream: stream.write(data))


def atomic_write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Write ``lines`` (text, each with its own line end) to ``path`` as they come, never the whole file in memory,
    through a temporary file and a rename as :func:`atomic_write_bytes` does."""

    def write(stream: Any) -> None:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="", write_through=False)
        text.writelines(lines)
        text.flush()
        text.detach()

    atomic_write_stream(path, write)


def atomic_write_stream(path: str | Path, write: Any) -> None:
    """``write(binary stream)`` into a temporary file, then rename it to ``path`` (see :func:`atomic_write_bytes`)."""
    path = Path(path)
    try:
        _write_through_temporary(path, write)
    except OSError as error:
        if isinstance(error, OutputError):
            raise
        raise OutputError(str(path), error) from None


def _write_through_temporary(path: Path, write: Any) -> None:
    if path.is_symlink():  # write the link's target and keep the link, as `>` would; a rename would replace the link
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777  # a file written again keeps its mode (0444 stays read-only)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()  # mkstemp creates 0600; give the usual mode
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


STEP_SUMMARY_VARIABLE = "GITHUB_STEP_SUMMARY"


def append_step_summary(markdown: str) -> Path | None:
    """Append ``markdown`` to the GitHub job summary (``$GITHUB_STEP_SUMMARY``) when that is set.

    The file is rewritten through :func:`atomic_write_text` (old content, a blank line, ours), so a
    reader never sees half of it. Returns the summary's path, or None when the variable is unset.
    """
    summary = os.environ.get(STEP_SUMMARY_VARIABLE)
    if not summary:
        return None
    path = Path(summary)
    try:  # bytes: the summary is the runner's file, whatever another step wrote into it is kept as it was
        existing = path.read_bytes()
    except FileNotFoundError:
        existing = b""
    except OSError as error:  # a folder, no permission
        raise OutputError(f"${STEP_SUMMARY_VARIABLE} {path}", error) from None
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    atomic_write_bytes(path, existing + (b"\n" if existing else b"") + markdown.encode("utf-8"))
    return path


def readings_to_csv(readings: Iterable[Reading]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=READING_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for reading in sorted(readings, key=lambda r: (r.rank, r.sequence)):
        row = reading.as_row()
        row["elapsed_s"] = f"{reading.elapsed_s:.6f}"
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return buffer.getvalue()


def _parse_optional_int(value: str, column: str, source: str, line: int) -> int | None:
    if value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise DamagedInput(f"{source}:{line}: column {column} must be a whole number of bytes, got {value!r}") from None
    if number < 0:
        raise DamagedInput(f"{source}:{line}: column {column} must be a whole number of bytes >= 0, got {value!r}")
    return number


def readings_by_class_from_csv(text: str, source: str = "readings.csv") -> tuple[list[Reading], dict[int, int]]:
    """A ``readings.csv`` with its ranks that read alike collapsed: (the readings of each class's first rank,
    rank -> that first rank), or (every reading, ``{}``) when no two ranks read alike (:attr:`Run.classes`).

    A file as :func:`readings_to_csv` writes it holds one row a line, each rank's rows together and the ranks in
    ascending order one after another: a rank whose lines, less the rank number, are an earlier rank's lines reads
    alike, and only the first rank of each class is parsed and checked (:func:`readings_from_csv`), so thousands of
    ranks that read alike cost a comparison of text each, not a parse of every row. Any other file (ranks
    interleaved, out of order or missing, a blank line, a carriage return, a quoted line end, damage) is read row
    by row by :func:`readings_from_csv`, every rank its own."""
    header = ",".join(READING_COLUMNS) + "\n"
    if not text.startswith(header) or not text.endswith("\n") or "\r" in text:
        return readings_from_csv(text, source), {}
    readings: list[Reading] = []
    first_of: dict[str, tuple[int, int]] = {}  # a class's lines less the rank number -> (its first rank, its lines)
    owners: dict[int, int] = {}
    start = len(header)
    while start < len(text):
        rank_text = text[start:text.find(",", start)]
        if not (rank_text.isascii() and rank_text.isdigit()) or rank_text != str(int(rank_text)):
            return readings_from_csv(text, source), {}
        rank = int(rank_text)
        following = text.find(f"\n{rank + 1},", start - 1)
        end = len(text) if following < 0 else following + 1
        lines = text[start - 1:end - 1]  # each of the rank's lines after its "\n"
        prefix = f"\n{rank_text},"
        count = lines.count(prefix)
        rest = lines.replace(prefix, "\n")  # as many line ends as ``lines``
        owner, class_lines = first_of.get(rest, (None, 0))
        # every line the rank's: as many as its line ends (a class's rest holds as many as the class has lines)
        if count != (lines.count("\n") if owner is None else class_lines):
            return readings_from_csv(text, source), {}  # a line of another rank, or none of any: not one after another
        if owner is None:
            try:
                rows = readings_from_csv(header + text[start:end], source)
            except DamagedInput:  # the whole file, row by row, says what is wrong and on which line
                return readings_from_csv(text, source), {}
            if len(rows) != count:  # a quoted line end: a row over two lines
                return readings_from_csv(text, source), {}
            owner = rank
            first_of[rest] = (owner, count)
            readings.extend(rows)
        owners[rank] = owner
        start = end
    return readings, (owners if len(first_of) < len(owners) else {})


def readings_from_csv(text: str, source: str = "readings.csv") -> list[Reading]:
    """The readings of a ``readings.csv``; a damaged file (wrong header or columns, bytes that are not whole
    numbers >= 0, a rank's step or sequence number twice) is :class:`DamagedInput` naming file and line.

    A row's fields other than the rank are parsed and checked once per distinct content: ranks that read alike
    (thousands of them in a large run) repeat the same rows under another rank number."""
    known_steps = {*GENERIC_STEPS, *engines.kinds_of_every_engine()}
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != READING_COLUMNS:
        raise DamagedInput(f"{source}: header must be {','.join(READING_COLUMNS)}")
    readings = []
    seen: dict[tuple, int] = {}
    parsed: dict[tuple[str, ...], dict[str, Any]] = {}
    line = 1
    for row in reader:
        if not row:  # a blank line is no row (as csv.DictReader reads it)
            continue
        line += 1
        if len(row) != len(READING_COLUMNS):
            raise DamagedInput(f"{source}:{line}: wrong number of columns (truncated file?)")
        content = tuple(row[1:])
        fields_ = parsed.get(content)
        if fields_ is None:  # checked in the order a reader meets the problems: numbers, names, duplicates, bytes
            fields_ = _parse_reading_row(row, known_steps, source, line)
            _check_once(seen, int(row[0]), fields_, source, line)
            fields_.update({column: _parse_optional_int(row[index], column, source, line)
                            for index, column in _OPTIONAL_INT_INDEX})
            parsed[content] = fields_
        else:
            try:
                _check_once(seen, int(row[0]), fields_, source, line)
            except ValueError:
                raise DamagedInput(f"{source}:{line}: rank, sequence and elapsed_s must be numbers") from None
        rank = int(row[0])
        reading = object.__new__(Reading)  # a frozen dataclass: its fields were checked above
        reading.__dict__.update(fields_, rank=rank)
        readings.append(reading)
    return readings


def _parse_reading_row(row: list[str], known_steps: set[str], source: str, line: int) -> dict[str, Any]:
    """A row's fields other than the rank and the optional bytes, checked (see :func:`readings_from_csv`), in
    :class:`Reading`'s order (the bytes are filled in after the duplicate check)."""
    values = dict(zip(READING_COLUMNS, row))
    try:
        int(values["rank"])
        sequence = int(values["sequence"])
        elapsed = float(values["elapsed_s"])
    except ValueError:
        raise DamagedInput(f"{source}:{line}: rank, sequence and elapsed_s must be numbers") from None
    if not math.isfinite(elapsed) or elapsed < 0:  # "nan", "inf" parse as floats; no JSON can hold them
        raise DamagedInput(f"{source}:{line}: elapsed_s must be a finite number of seconds >= 0, got {values['elapsed_s']!r}")
    if values["step"] not in known_steps:
        raise DamagedInput(f"{source}:{line}: unknown step {values['step']!r}")
    if values["status"] not in STATUSES:
        raise DamagedInput(f"{source}:{line}: unknown status {values['status']!r}")
    return {"rank": 0, "sequence": sequence, "step": values["step"], "group": values["group"], "status": values["status"],
            **dict.fromkeys(_OPTIONAL_INT_COLUMNS), "elapsed_s": elapsed, "note": values["note"]}


def _check_once(seen: dict[tuple, int], rank: int, fields_: dict[str, Any], source: str, line: int) -> None:
    """A rank's step, and its sequence number, once each."""
    group, step, sequence = fields_["group"], fields_["step"], fields_["sequence"]
    for key in ((rank, group, step), (rank, sequence)):
        first = seen.setdefault(key, line)
        if first != line:
            what = (f"{group}/{step}" if group and group != step else step) if len(key) == 3 else f"sequence {sequence}"
            raise DamagedInput(f"{source}:{line}: rank {rank} {what} again (first on line {first}): duplicated rows")


def launch_paths(folder: Path, suffix: str = "") -> tuple[Path, Path]:
    """A launch's ``launch.json`` (the scenarios it measures, read by every rank's launcher) and ``torchrun.log``
    (torchrun's own output and its launchers'); ``suffix`` -N where one comparison needs several launches."""
    return folder / f"launch{suffix}.json", folder / f"torchrun{suffix}.log"


def stream_path(run_dir: Path, rank: int) -> Path:
    return run_dir / "ranks" / f"rank-{rank:05d}.jsonl"


def stack_path(run_dir: Path, rank: int) -> Path:
    """Where a measuring process that made no progress for most of ``--timeout`` leaves its Python stacks (the
    worker's :class:`memprobe.measure.worker.SilenceWatch`), for the parent's silence message."""
    return run_dir / "ranks" / f"rank-{rank:05d}.stack.txt"

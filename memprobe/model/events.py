"""What a worker tells its parent: one JSON object a line in ``ranks/rank-NNNNN.jsonl``.

Each event is a frozen dataclass with one ``to_json`` (the line, without its newline) and one
``from_json`` (:func:`parse_event` picks the class from the ``type`` field); :class:`EventKind` names
them all. The shape follows torch's ``torch/distributed/elastic/events/api.py`` (an Event with
``serialize``/``deserialize``). Every event carries ``time`` (``time.time()`` on the worker's host,
the clock the parent shares for its own ranks: :mod:`memprobe.model.timings`).

The bytes of a line are those of ``json.dumps(..., sort_keys=True)`` of its fields plus ``type``: run
folders written before these classes existed read back unchanged.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Union

from memprobe.model.records import READING_COLUMNS, RankInfo, Reading, Word


class EventKind(Word):
    """The ``type`` of an event line (a ``str`` Enum: the JSON holds the bare word)."""

    LAUNCHED = "launched"  # a rank's launcher runs (one torchrun process, shared by the launch's scenarios)
    PHASE = "phase"  # the launcher imported torch (``imported``), rank 0 wrote the gathered files (``gathered``)
    FORKED = "forked"  # the launcher forked this scenario's measuring process
    EXITED = "exited"  # the launcher saw that process end
    STARTED = "started"  # the measuring process runs (in runs made before launchers: the worker itself)
    ARRIVED = "arrived"  # the rank finished a step and waits for the others there
    READING = "reading"  # one reading, on disk before the next step starts
    INFO = "info"  # the rank's versions, GPU and communicator decisions
    ERROR = "error"  # where the rank broke, and why
    DONE = "done"  # the rank finished


class PhaseName(Word):
    IMPORTED = "imported"
    GATHERED = "gathered"


class MeasuringProcess(Word):
    """Where a scenario's measuring process runs (``started``'s ``process``)."""

    LAUNCHER = "launcher"  # the launcher itself: a launch of one scenario
    FORKED = "forked"  # a child the launcher forked
    FRESH_EXEC = "fresh-exec"  # a forked child that must exec a fresh interpreter (its launcher had other threads)
    FRESH = "fresh"  # that fresh interpreter, or one a forked child became after torch's fork poison


class MalformedEvent(ValueError):
    """A line that is JSON but no event: an unknown ``type``, a missing or mistyped field (one line of text)."""


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class _Event:
    kind: ClassVar[EventKind]
    #: Fields a line leaves out when they are None: lines of older memprobes lack them, and read back the same.
    absent_when_none: ClassVar[tuple[str, ...]] = ()

    def fields_json(self) -> dict[str, Any]:
        return self._without_absent(asdict(self))

    def _without_absent(self, document: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in document.items() if not (key in self.absent_when_none and value is None)}

    def to_json(self) -> str:
        return json.dumps({"type": self.kind.value, **self.fields_json()}, sort_keys=True)

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "_Event":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def from_json(cls, line: str | bytes) -> "WorkerEvent":
        """The event of one line, which must be of this class."""
        event = parse_event(line)
        if not isinstance(event, cls):
            raise MalformedEvent(f"a {event.kind.value} event, not {cls.kind.value}")
        return event


@dataclass(frozen=True)
class Launched(_Event):
    kind: ClassVar[EventKind] = EventKind.LAUNCHED
    pid: int
    rank: int = 0
    local_rank: int = 0
    group_rank: int = 0
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class PhaseReached(_Event):
    kind: ClassVar[EventKind] = EventKind.PHASE
    absent_when_none: ClassVar[tuple[str, ...]] = ("threads",)
    name: PhaseName
    threads: int | None = None  # imported: the launcher's threads (fork() copies only the calling one)
    time: float = field(default_factory=_now)

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "PhaseReached":
        try:
            name = PhaseName(data["name"])
        except ValueError:
            raise MalformedEvent(f"unknown phase {data['name']!r}") from None
        return cls(name=name, threads=data.get("threads"), time=data["time"])


@dataclass(frozen=True)
class Forked(_Event):
    kind: ClassVar[EventKind] = EventKind.FORKED
    pid: int
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class Exited(_Event):
    kind: ClassVar[EventKind] = EventKind.EXITED
    pid: int
    code: int  # os.waitstatus_to_exitcode: negative for a signal
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class Started(_Event):
    kind: ClassVar[EventKind] = EventKind.STARTED
    absent_when_none: ClassVar[tuple[str, ...]] = ("group_rank", "process")  # both absent in older runs
    pid: int
    rank: int = 0
    local_rank: int = 0
    group_rank: int | None = None
    process: str | None = None  # a MeasuringProcess
    time: float = field(default_factory=_now)


@dataclass(frozen=True)
class Arrived(_Event):
    kind: ClassVar[EventKind] = EventKind.ARRIVED
    step: str
    group: str = ""
    time: float = field(default_factory=_now)

    @property
    def where(self) -> str:
        return f"{self.group}/{self.step}" if self.group else self.step


@dataclass(frozen=True)
class ReadingTaken(_Event):
    kind: ClassVar[EventKind] = EventKind.READING
    reading: Reading
    time: float = field(default_factory=_now)

    @property
    def where(self) -> str:
        return f"{self.reading.group}/{self.reading.step}" if self.reading.group else self.reading.step

    def fields_json(self) -> dict[str, Any]:
        return {**asdict(self.reading), "time": self.time}

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "ReadingTaken":
        missing = [name for name in READING_COLUMNS if name not in data and name != "note"]
        if missing:
            raise MalformedEvent(f"reading without {', '.join(missing)}")
        reading = Reading(**{name: data[name] for name in READING_COLUMNS if name in data})
        _check_types(reading)
        return cls(reading=reading, time=data["time"])


@dataclass(frozen=True)
class InfoReported(_Event):
    kind: ClassVar[EventKind] = EventKind.INFO
    info: RankInfo
    time: float = field(default_factory=_now)

    def fields_json(self) -> dict[str, Any]:
        return {**asdict(self.info), "time": self.time}

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "InfoReported":
        known = {f.name for f in fields(RankInfo)}
        return cls(info=RankInfo(**{key: value for key, value in data.items() if key in known}), time=data["time"])


@dataclass(frozen=True)
class ErrorReported(_Event):
    kind: ClassVar[EventKind] = EventKind.ERROR
    message: str = "error"
    rank: int | None = None
    group: str = ""
    step: str = ""
    traceback: tuple[str, ...] = ()
    time: float = field(default_factory=_now)

    def fields_json(self) -> dict[str, Any]:
        return {**asdict(self), "traceback": list(self.traceback)}

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "ErrorReported":
        data = dict(data)
        if "traceback" in data:
            data["traceback"] = tuple(data["traceback"])
        return super().from_fields(data)  # type: ignore[return-value]


@dataclass(frozen=True)
class ResultsLocation:
    """Where rank 0 wrote the gathered results (a node other than 0 points there)."""

    host: str
    folder: str


@dataclass(frozen=True)
class Done(_Event):
    kind: ClassVar[EventKind] = EventKind.DONE
    absent_when_none: ClassVar[tuple[str, ...]] = ("results_at",)  # absent in runs made before several nodes
    rank: int = 0
    results_at: ResultsLocation | None = None
    time: float = field(default_factory=_now)

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "Done":
        where = data.get("results_at")
        return cls(rank=data.get("rank", 0), results_at=ResultsLocation(**where) if where else None, time=data["time"])


WorkerEvent = Union[Launched, PhaseReached, Forked, Exited, Started, Arrived, ReadingTaken, InfoReported, ErrorReported,
                    Done]

EVENT_CLASSES: dict[EventKind, type[_Event]] = {cls.kind: cls for cls in (
    Launched, PhaseReached, Forked, Exited, Started, Arrived, ReadingTaken, InfoReported, ErrorReported, Done)}


def event_from_dict(data: Any) -> WorkerEvent:
    """The event a decoded line holds; :class:`MalformedEvent` for anything else."""
    if not isinstance(data, dict):
        raise MalformedEvent(f"an event is a JSON object, not {type(data).__name__}")
    try:
        kind = EventKind(data.get("type", ""))
    except ValueError:
        raise MalformedEvent(f"unknown event type {data.get('type')!r}") from None
    # a line without a stamp (none the worker writes) reads as time 0, never as "now"
    values = {"time": 0.0, **{key: value for key, value in data.items() if key != "type"}}
    try:
        event = EVENT_CLASSES[kind].from_fields(values)
    except (TypeError, KeyError, AttributeError) as error:
        raise MalformedEvent(f"{kind.value} event: {error}") from None
    _check_types(event, kind.value)
    return event  # type: ignore[return-value]


_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "int | None": (int, type(None)), "str | None": (str, type(None)),
}


def _check_types(value: Any, what: str = "reading") -> None:
    """Fields of the plain types hold values of that type (a ``pid`` of ``"12"`` is no event)."""
    for item in fields(value):
        allowed = _SIMPLE_TYPES.get(str(item.type))
        field_value = getattr(value, item.name)
        if allowed and (not isinstance(field_value, allowed) or isinstance(field_value, bool)):
            raise MalformedEvent(f"{what} event: {item.name} must be {item.type}, not {field_value!r}")


def parse_event(line: str | bytes) -> WorkerEvent:
    """One line of a rank's stream as its event; :class:`MalformedEvent` for a line that is not one."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise MalformedEvent(f"not JSON ({error})") from None
    return event_from_dict(data)


def load_stream(path: Path) -> tuple[list[WorkerEvent], list[Reading]]:
    """The events a worker streamed and their readings; a torn last line (worker killed mid-write), or any line
    that is no event, is skipped."""
    events: list[WorkerEvent] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return events, []
    for line in text.splitlines():
        try:
            events.append(parse_event(line))
        except MalformedEvent:
            continue
    return events, [event.reading for event in events if isinstance(event, ReadingTaken)]

"""The typed contract between the stages (memprobe/model/): worker events, run records, worker and launch files.

Pure Python, no launch: every committed file under results/ goes through its typed reader and is written back
byte for byte, and every event kind survives its own round trip; a line that is no event is refused clearly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprobe.launch.follow import StreamFollower
from memprobe.model.comparison import COMPARISON_FILE, write_comparison_index
from memprobe.model.events import (
    EVENT_CLASSES, Arrived, Done, ErrorReported, EventKind, Exited, Forked, InfoReported, Launched, MalformedEvent,
    PhaseName, PhaseReached, ReadingTaken, ResultsLocation, Started, load_stream, parse_event,
)
from memprobe.model.launch_files import LaunchFile, WorkerConfig
from memprobe.model.records import (
    LaunchInfo, PlannedGroup, RankInfo, Reading, RunRecord, RunStatus, RunTimings, StepStatus, stream_path,
)
from memprobe.model.scenario import Scenario, ScenarioSet

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def committed(pattern: str) -> list[Path]:
    """Committed files: the GPU evidence under results/ and the recorded CPU launches under tests/fixtures/."""
    return sorted(RESULTS.rglob(pattern)) + sorted((ROOT / "tests" / "fixtures").rglob(pattern))


def sample_reading() -> Reading:
    return Reading(rank=1, sequence=4, step="pynccl", group="tp", status="skipped", primary_bytes=123, process_bytes=None,
                   device_used_bytes=456, torch_reserved_bytes=0, other_gpus_bytes=None, elapsed_s=0.25, note="width 1")


SAMPLES = [
    Launched(pid=10, rank=1, local_rank=1, group_rank=0, time=1.5),
    PhaseReached(name=PhaseName.IMPORTED, threads=1, time=2.0),
    PhaseReached(name=PhaseName.GATHERED, time=2.5),
    Forked(pid=11, time=3.0),
    Exited(pid=11, code=-9, time=3.5),
    Started(pid=11, rank=1, local_rank=1, group_rank=0, process="forked", time=4.0),
    Arrived(group="tp", step="before", time=4.5),
    ReadingTaken(sample_reading(), time=5.0),
    InfoReported(RankInfo(rank=1, host="h", pid=11, communicators={"tp": {"pynccl": "built"}}, warnings=["w"]), time=5.5),
    ErrorReported(rank=1, group="tp", step="pynccl", message="RuntimeError: boom", traceback=("a", "b"), time=6.0),
    Done(rank=1, results_at=ResultsLocation(host="h", folder="/r"), time=6.5),
    Done(rank=0, time=7.0),
]


def test_every_kind_has_one_class_and_a_sample_here():
    assert set(EVENT_CLASSES) == set(EventKind)
    assert {type(event) for event in SAMPLES} == set(EVENT_CLASSES.values())


@pytest.mark.parametrize("event", SAMPLES, ids=lambda event: type(event).__name__)
def test_an_event_reads_back_as_itself(event):
    line = event.to_json()
    assert json.loads(line)["type"] == event.kind.value and "\n" not in line
    assert parse_event(line) == event
    assert type(event).from_json(line) == event
    assert parse_event(line).to_json() == line


def test_the_wire_format_is_the_one_the_workers_always_wrote():
    """Lines as memprobe.measure.worker wrote them before these classes existed (sorted keys, bare words)."""
    assert Forked(pid=7, time=1.0).to_json() == '{"pid": 7, "time": 1.0, "type": "forked"}'
    assert PhaseReached(PhaseName.GATHERED, time=2.0).to_json() == '{"name": "gathered", "time": 2.0, "type": "phase"}'
    assert Done(rank=0, time=3.0).to_json() == '{"rank": 0, "time": 3.0, "type": "done"}'
    reading = json.loads(ReadingTaken(sample_reading(), time=5.0).to_json())
    assert reading["status"] == "skipped" and reading["primary_bytes"] == 123 and reading["process_bytes"] is None


def test_every_committed_stream_line_reads_back_byte_for_byte():
    streams = committed("rank-*.jsonl")
    assert len(streams) > 25
    kinds = set()
    for stream in streams:
        for line in stream.read_text(encoding="utf-8").splitlines():
            try:
                json.loads(line)
            except json.JSONDecodeError:  # a torn last line, as a killed worker leaves it
                continue
            event = parse_event(line)
            kinds.add(event.kind)
            assert event.to_json() == line, stream
    assert {EventKind.LAUNCHED, EventKind.READING, EventKind.INFO, EventKind.DONE, EventKind.ERROR} <= kinds


@pytest.mark.parametrize("line, says", [
    ('{"type": "teleported", "pid": 1}', "unknown event type 'teleported'"),
    ('{"pid": 1}', "unknown event type None"),
    ('[1, 2]', "an event is a JSON object, not list"),
    ('{"type": "forked"}', "forked event"),
    ('{"type": "forked", "pid": "12"}', "pid must be int"),
    ('{"type": "exited", "pid": 1, "code": true}', "code must be int"),
    ('{"type": "phase", "name": "lunch"}', "unknown phase 'lunch'"),
    ('{"type": "reading", "group": "tp", "step": "before"}', "reading without rank"),
    ('{"type": "done", "results_at": {"host": "h"}}', "done event"),
    ('{"type": "forked", "pid": 1', "not JSON"),
])
def test_a_line_that_is_no_event_is_refused_in_one_clear_line(line, says):
    with pytest.raises(MalformedEvent, match=None) as refused:
        parse_event(line)
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_from_json_of_one_class_refuses_another_kind():
    with pytest.raises(MalformedEvent, match="a forked event, not done"):
        Done.from_json(Forked(pid=1).to_json())


def test_the_follower_and_the_loader_skip_what_is_no_event_and_keep_the_rest(tmp_path):
    """Garbage, an unknown kind and a torn last line are skipped; the events around them still count."""
    path = stream_path(tmp_path, 0)
    path.parent.mkdir(parents=True)
    good = [Started(pid=5, rank=0, time=1.0), ReadingTaken(sample_reading(), time=2.0), Done(rank=0, time=3.0)]
    path.write_text("\n".join([good[0].to_json(), "garbage", '{"type": "teleported"}', good[1].to_json(),
                               '{"type": "forked", "pid": "x"}', good[2].to_json(), '{"type": "exi']), encoding="utf-8")
    follower = StreamFollower(tmp_path, range(1))
    follower.poll()
    assert follower.rank_pids == {0: 5} and follower.readings == {0: 1} and follower.done == {0}
    assert follower.last_step[0] == "tp/pynccl" and not follower.exited
    events, readings = load_stream(path)
    assert events == good and readings == [sample_reading()]


# ----------------------------------------------------------------------------------- committed files


def written_back(path: Path, written: str) -> bool:
    """Whether ``written`` is ``path``'s bytes; for a file of an older memprobe that lacks keys added since (run.json's
    timings, launch, source; a worker config's engine and stack source), whether every key it holds reads back the same (every
    committed file is ``json.dumps(indent=2, sort_keys=True)``, so the same values are the same bytes) -- True when
    the bytes are equal."""
    text = path.read_text(encoding="utf-8")
    document, again = json.loads(text), json.loads(written)
    if set(document) == set(again):
        assert written == text, path
        return True
    assert holds(again, document), path
    return False


def holds(written: object, old: object) -> bool:
    """``written`` is ``old`` with, at most, keys added to its objects (at any depth)."""
    if isinstance(old, dict):
        return isinstance(written, dict) and set(old) <= set(written) and all(holds(written[k], v) for k, v in old.items())
    return written == old


def test_every_committed_run_record_reads_back_and_writes_the_same_bytes():
    records = committed("run.json")
    assert len(records) > 100
    whole = timed = shared = 0
    for path in records:
        record = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
        assert isinstance(record.status, RunStatus) and all(isinstance(group, PlannedGroup) for group in record.plan)
        assert record.timings is None or isinstance(record.timings, RunTimings)
        assert record.launch is None or isinstance(record.launch, LaunchInfo)
        timed += record.timings is not None
        shared += record.launch is not None
        whole += written_back(path, record.to_json())
    assert whole >= 6 and timed > 50 and shared > 20  # whole: those made by this memprobe, byte for byte


def test_every_committed_worker_config_and_launch_file_writes_the_same_bytes():
    configs, launches = committed("worker-config.json"), committed("launch*.json")
    assert len(configs) >= 7 and launches
    whole = sum(written_back(path, WorkerConfig.from_json(path.read_text(encoding="utf-8"), str(path)).to_json())
                for path in configs)
    assert whole >= 1
    for path in launches:
        assert written_back(path, LaunchFile.from_json(path.read_text(encoding="utf-8")).to_json())


def test_every_committed_comparison_index_of_this_schema_writes_the_same_bytes(tmp_path):
    """comparison.json rebuilt from its scenarios' definitions (indexes of an older memprobe hold none to rebuild
    from; load_comparison reads only their names, folders and baseline)."""
    rebuilt = 0
    for path in committed(COMPARISON_FILE):
        text = path.read_text(encoding="utf-8")
        document = json.loads(text)
        entries = document["scenarios"]
        if not all("schema" in entry for entry in entries):
            continue
        scenarios = tuple(Scenario.from_definition({k: v for k, v in entry.items() if k != "folder"}, str(path))
                          for entry in entries)
        out = tmp_path / str(rebuilt)
        write_comparison_index(out, document["comparison_id"], ScenarioSet(scenarios, document["baseline"]),
                               {entry["name"]: entry["folder"] for entry in entries})
        assert (out / COMPARISON_FILE).read_text(encoding="utf-8") == text, path
        rebuilt += 1
    assert rebuilt > 5


def test_an_unknown_run_status_is_damaged_input():
    from memprobe.errors import DamagedInput

    path = committed("run.json")[0]
    document = dict(json.loads(path.read_text(encoding="utf-8")), status="paused")
    with pytest.raises(DamagedInput, match="status 'paused' is not one of running, complete, incomplete"):
        RunRecord.from_dict(document, "run.json")


def test_a_status_reads_as_its_bare_word_in_json_messages_and_repr():
    """Messages that showed a plain-string status (``{status!r}``, ``{status}``) read the same with the Enum."""
    assert json.dumps([RunStatus.COMPLETE, StepStatus.SKIPPED, EventKind.DONE]) == '["complete", "skipped", "done"]'
    assert f"{RunStatus.INCOMPLETE} {RunStatus.INCOMPLETE!r}" == "incomplete 'incomplete'"
    assert RunStatus.COMPLETE == "complete" and StepStatus("ok") is StepStatus.OK


def test_a_run_without_timings_or_launch_writes_them_empty_as_before():
    path = next(p for p in committed("run.json") if "timings" not in json.loads(p.read_text(encoding="utf-8")))
    record = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
    assert record.timings is None and record.launch is None
    document = json.loads(record.to_json())
    assert document["timings"] == {} and document["launch"] == {} and record.as_document() == document

"""What the parent writes for its workers before a launch.

* ``launch.json`` (:class:`LaunchFile`): the scenarios one torchrun launch measures, read by every rank's launcher;
* ``<run>/worker-config.json`` (:class:`WorkerConfig`): what each measuring process of a scenario measures.

(What run.json keeps of the launch is :class:`memprobe.model.records.LaunchInfo`.)

Each is written as ``json.dumps(..., indent=2, sort_keys=True)`` of the same keys as before these classes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from memprobe import engines
from memprobe.engines.api import LayoutBase
from memprobe.engines.stacks import Stack, stack_from_record


def _document(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class WorkerConfig:
    layout: LayoutBase
    stack: Stack
    device: str  # cuda | cpu
    warmup: str
    timeout_s: float  # the workers' own collective timeout (later than the parent's --timeout)
    allow_busy_gpu: bool = False
    engine: str = "memprobe"  # a name memprobe.engines knows, as records keep it (memprobe: SGLang's reference)

    def to_json(self) -> str:
        return _document({"layout": self.layout.as_dict(), "stack": self.stack.as_dict(), "device": self.device,
                          "warmup": self.warmup, "timeout_s": self.timeout_s, "allow_busy_gpu": self.allow_busy_gpu,
                          "engine": self.engine})

    @classmethod
    def from_json(cls, text: str, where: str = "worker-config.json") -> "WorkerConfig":
        data = json.loads(text)
        engine = engines.get(data.get("engine", "memprobe"), where=f"{where}: engine").engine
        return cls(layout=engine.layout_type(**data["layout"]), stack=stack_from_record(engine, data["stack"], where),
                   device=data["device"],
                   warmup=data["warmup"], timeout_s=float(data["timeout_s"]),
                   allow_busy_gpu=bool(data.get("allow_busy_gpu", False)), engine=data.get("engine", "memprobe"))


@dataclass(frozen=True)
class LaunchScenario:
    """One scenario of a launch: its name, its run folder, and the variables it sets on top of the launch's."""

    name: str
    run_dir: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchFile:
    scenarios: tuple[LaunchScenario, ...]
    jobs: int = 1  # measuring processes of one rank at once

    def to_json(self) -> str:
        return _document({"jobs": self.jobs, "scenarios": [asdict(scenario) for scenario in self.scenarios]})

    @classmethod
    def from_json(cls, text: str) -> "LaunchFile":
        data = json.loads(text)
        return cls(scenarios=tuple(LaunchScenario(**entry) for entry in data["scenarios"]),
                   jobs=max(1, int(data.get("jobs", 1))))

    def scenario(self, name: str) -> LaunchScenario:
        return next(entry for entry in self.scenarios if entry.name == name)

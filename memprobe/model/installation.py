"""The installed engine a run imported, as the parent read it from the engine's sources (never imported there).

``run.json`` keeps it under ``environment[<engine name>]`` (``"sglang"``, ``"vllm"``); a baseline keeps it under
``measured_with[<engine name>]``. The JSON keys are the ones every run recorded so far holds (``version``,
``path``, ``parallel_state_sha256``, and SGLang's ``api`` and ``custom_allreduce_default``); the engine is the key
it is kept under and the site folder asked for is the scenario's, so neither is written twice. Runs of the first
installed-engine releases recorded the version string alone: :meth:`EngineInstallation.from_json` reads both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: Keys written only when the engine has them (SGLang's API style and custom all-reduce default).
_OPTIONAL_KEYS = ("api", "custom_allreduce_default")


@dataclass(frozen=True)
class EngineInstallation:
    """One installed engine as the workers import it."""

    engine: str  # "sglang", "vllm": the engine's name (the key in run.json's environment)
    version: str  # read from the package's sources; "unknown" where none is found
    path: str = ""  # the package folder the workers import (``.../site-packages/vllm``)
    parallel_state_sha256: str = ""  # of the engine's parallel_state.py: a changed group code shows in a gate
    site: str = ""  # the site folder asked for (``--sglang SITE``, ``--vllm SITE``); "" for the importable one
    api: str | None = None  # SGLang: "kwargs" or "runtime_context"
    custom_allreduce_default: str | None = None  # SGLang: "v1" or "v2"

    def to_json(self) -> dict[str, Any]:
        """What run.json records under ``environment[<engine>]``: exactly the keys recorded so far."""
        document: dict[str, Any] = {"version": self.version, "path": self.path,
                                    "parallel_state_sha256": self.parallel_state_sha256}
        for key in _OPTIONAL_KEYS:
            if getattr(self, key) is not None:
                document[key] = getattr(self, key)
        return document

    @classmethod
    def from_json(cls, engine: str, value: Any, site: str = "") -> "EngineInstallation | None":
        """The record kept under ``environment[engine]`` (a mapping, or an older run's version string); None for
        none."""
        if not value:
            return None
        if not isinstance(value, Mapping):
            return cls(engine=engine, version=str(value), site=site)
        optional = {key: None if value.get(key) is None else str(value[key]) for key in _OPTIONAL_KEYS}
        return cls(engine=engine, version=str(value.get("version") or "?"), path=str(value.get("path") or ""),
                   parallel_state_sha256=str(value.get("parallel_state_sha256") or ""), site=site, **optional)

    def describe(self) -> str:
        """``0.5.11 (/opt/sgl/sglang, parallel_state sha256 1a2b3c4d5e6f)`` (the gate's notes)."""
        details = [self.path] if self.path else []
        if self.parallel_state_sha256:
            details.append(f"parallel_state sha256 {self.parallel_state_sha256[:12]}")
        return self.version + (f" ({', '.join(details)})" if details else "")


__all__ = ["EngineInstallation"]

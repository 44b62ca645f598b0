"""Baseline files: measured bytes per scenario, rank and component, kept in git.

A baseline is a JSON document written deterministically (sorted keys, two-space indent,
bytes as integers, no timestamps), so that updating it with identical measurements gives a
byte-identical file and a pull request's diff *is* the acknowledgement of a change::

    {
      "memprobe_baseline": true,
      "schema_version": 1,
      "description": "optional free text, kept across updates",
      "scenarios": {
        "tp4-ep2-lean": {
          "definition": {...Scenario.definition()...},
          "definition_hash": "326226f04641f10e",
          "environment_key": {"gpu_model": ..., "gpu_count": 4, "driver": ..., "cuda": ...,
                              "torch": ..., "nccl": ..., "nccl_env": {"NCCL_...": "..."},
                              "sampling_mode": "process", "nvml_memory_api": "v2",
                              "memprobe": "0.1.0"},
          "ranks": {"0": {"cuda_context": 547356672, "moe_ep/pynccl": 0, ...,
                          "total_after_init": ..., "total_after_first_use": ...}}
        }
      },
      "thresholds": {
        "default": {"relative": 0.05, "absolute_bytes": 67108864},
        "metrics": {"moe_*/pynccl": {"relative": 0.02}},
        "scenarios": {"tp4": {"absolute_bytes": 134217728,
                              "metrics": {"total_after_first_use": {"max_bytes": 2147483648}}}}
      }
    }

Rank metrics are every component :func:`memprobe.analysis.attribution.rank_components` knows for the
rank (bytes added per step and group, plus the totals); unknown (``None``) ones are left out.

A threshold rule holds any of ``relative`` (fraction, 0.05 = 5%), ``absolute_bytes``,
``max_bytes`` (an absolute cap on the current value) and ``ignore`` (``true``: not judged).
See :func:`memprobe.gate.thresholds.resolve_limit` for how rules are layered.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from memprobe import engines
from memprobe.analysis.attribution import components_by_rank
from memprobe.errors import DamagedInput, IncomparableError, MeasurementError, UsageError
from memprobe.model.memory_kind import describe as describe_kind, memory_kind
from memprobe.model.records import Run, atomic_write_text
from memprobe.model.steps import GROUPS_CREATED
from memprobe.model.comparison import Comparison
from memprobe.model.installation import EngineInstallation
from memprobe.model.scenario import Scenario, ScenarioSet, validate_name

from memprobe.units import MIB as MiB

BASELINE_SCHEMA_VERSION = 1
MAX_BYTES = 2**63 - 1  # a byte count past int64 is no GPU's (and JSON readers other than Python's lose its digits)
MAX_COUNT = 65536  # GPUs per node or nodes: memprobe plans at most 65536 ranks (MAX_WORLD_SIZE)

#: Fields of ``run.record.environment`` that must match for two runs to be comparable.
#: ``host`` and ``python`` are left out on purpose: CI runners change host names (asv #148).
ENVIRONMENT_KEY_FIELDS: tuple[str, ...] = (
    "gpu_model",
    "gpu_count",
    "driver",
    "cuda",
    "torch",
    "nccl",
    "nccl_env",
    "sampling_mode",
    "nvml_memory_api",
    "memprobe",
)
NCCL_ENV_PREFIXES: tuple[str, ...] = ("NCCL_", "TORCH_NCCL_")
# NCCL's own logging (--nccl-log) changes no byte: results/h200x4-nccl-20261128 read the same at every step
# and rank traced and untraced, so a traced run stays comparable with an untraced baseline.
NOT_IN_KEY_PREFIXES: tuple[str, ...] = ("NCCL_DEBUG",)

DEFAULT_RELATIVE = 0.05
DEFAULT_ABSOLUTE_BYTES = 64 * MiB
RULE_FIELDS: tuple[str, ...] = ("relative", "absolute_bytes", "max_bytes", "ignore")
#: the one metric that is a remainder, not bytes a step added: host memory freed between steps makes it negative
MAY_BE_NEGATIVE: frozenset[str] = frozenset({"unattributed"})

_TOP_KEYS = {"schema_version", "memprobe_baseline", "scenarios", "thresholds", "description"}
_SCENARIO_KEYS = {"definition", "definition_hash", "environment_key", "ranks", "measured_with"}
_THRESHOLD_KEYS = {"default", "metrics", "scenarios"}


def default_thresholds() -> dict[str, Any]:
    return {
        "default": {"relative": DEFAULT_RELATIVE, "absolute_bytes": DEFAULT_ABSOLUTE_BYTES},
        "metrics": {},
        "scenarios": {},
    }


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ThresholdRule:
    """One layer of threshold settings. ``None`` fields leave the value of a lower layer in place.

    ``scenario``/``metric`` say where it applies (``None``: everywhere); ``metric`` is an
    :func:`fnmatch.fnmatchcase` pattern on component keys (``moe_*/pynccl``, ``tp/*``).
    """

    scenario: str | None = None
    metric: str | None = None
    relative: float | None = None
    absolute_bytes: int | None = None
    max_bytes: int | None = None
    ignore: bool | None = None
    source: str = "baseline"  # "baseline" or "command line"

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RULE_FIELDS if getattr(self, name) is not None}

    def where(self) -> str:
        parts = []
        if self.scenario is not None:
            parts.append(f"scenario {self.scenario}")
        if self.metric is not None:
            parts.append(f"metric {self.metric}")
        return ", ".join(parts) or "all metrics"


@dataclass(frozen=True)
class BaselineScenario:
    name: str
    definition: dict[str, Any]
    definition_hash: str
    environment_key: dict[str, Any]
    ranks: dict[int, dict[str, int]]
    measured_with: dict[str, Any] = field(default_factory=dict)  # not part of the key: {"sglang": <installation>}

    def scenario(self) -> Scenario:
        """The scenario to run again (already checked by :func:`load_baseline`)."""
        return scenario_from_definition(self.definition, self.name)

    def metric_names(self) -> set[str]:
        return {metric for metrics in self.ranks.values() for metric in metrics}


@dataclass(frozen=True)
class Baseline:
    source: str
    scenarios: dict[str, BaselineScenario]
    rules: tuple[ThresholdRule, ...]
    document: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def thresholds_document(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.document.get("thresholds", default_thresholds())))

    def names(self) -> list[str]:
        return list(self.scenarios)

    def select(self, names: Iterable[str] | None) -> list[str]:
        """Scenario names to judge, in baseline order; unknown names are a usage error."""
        if not names:
            return self.names()
        wanted = list(dict.fromkeys(names))
        unknown = [name for name in wanted if name not in self.scenarios]
        if unknown:
            raise UsageError(
                f"{self.source}: unknown scenario(s) {', '.join(unknown)}; the baseline holds {', '.join(self.scenarios)}"
            )
        return [name for name in self.scenarios if name in wanted]

    def scenario_set(self, names: Iterable[str] | None = None) -> ScenarioSet:
        selected = self.select(names)
        scenarios = tuple(self.scenarios[name].scenario() for name in selected)
        return ScenarioSet(scenarios=scenarios, baseline=selected[0])


# --------------------------------------------------------------------------- building


def environment_key(run: Run) -> dict[str, Any]:
    """What must match between the baseline's run and a new one (see :data:`ENVIRONMENT_KEY_FIELDS`)."""
    environment = run.record.environment or {}
    key: dict[str, Any] = {name: environment.get(name) for name in ENVIRONMENT_KEY_FIELDS}
    nccl_env = environment.get("nccl_env") or {}
    key["nccl_env"] = {
        str(name): str(value)
        for name, value in sorted(dict(nccl_env).items())
        if str(name).startswith(NCCL_ENV_PREFIXES) and not str(name).startswith(NOT_IN_KEY_PREFIXES)
    }
    if key["memprobe"] is None and run.record.memprobe_version:
        key["memprobe"] = run.record.memprobe_version
    if environment.get("nnodes"):  # an estimate's topology (gpu_count is per node there); measured runs have none
        key["nnodes"] = environment["nnodes"]
    return key


def installed_engine(run: Run) -> str | None:
    """The name of the installed engine a run imported (``sglang``), None for a reproduction."""
    ref = engines.get(run.record.engine, where=f"run {run.record.run_id}: engine")
    return ref.engine.name if ref.installed else None


def installation_of(run: Run) -> Any:
    """The installed engine a run imported (its release and site), as run.json's environment records it under the engine's
    name (None for a reproduction)."""
    name = installed_engine(run)
    return (run.record.environment or {}).get(name) or None if name else None


def describe_installation(installation: Any) -> str:
    """``0.5.11 (/opt/sgl, parallel_state sha256 1a2b3c4d5e6f)``; older runs recorded the version alone."""
    found = EngineInstallation.from_json("", installation)
    return found.describe() if found else "none (reference engine)"


def portable_definition(scenario: Scenario) -> dict[str, Any]:
    """The scenario's definition as a baseline keeps it: without the installed engine's site folder, a path on the
    machine that measured it (a gate is given its own, ``--sglang SITE`` or ``--vllm SITE``; the site is not hashed)."""
    definition = scenario.definition()
    if definition.get("sglang"):  # the installation's site, whatever the engine (Scenario.sglang)
        definition["sglang"] = ""
    return definition


def portable_installation(installation: Any) -> Any:
    """An installed engine as a baseline keeps it: what identifies its code on any machine (release, the digest of
    its group code, its API), not the folder it lay in; a baseline written before keeps its path and is read as is."""
    if isinstance(installation, Mapping):
        return {key: value for key, value in installation.items() if key != "path"}
    return installation


def _check_complete(name: str, run: Run) -> None:
    record = run.record
    if record.failure is not None or record.status != "complete":
        why = record.failure.describe() if record.failure is not None else f"status is {record.status!r}"
        raise MeasurementError(
            f"scenario {name}: the run did not complete ({why}); a baseline needs complete runs",
            str(run.path) if run.path else None,
        )
    if record.results_at is not None:  # another node gathered the readings; this folder holds its own ranks only
        where = record.results_at
        raise MeasurementError(f"scenario {name}: this folder holds only this node's ranks; the gathered results are on "
                               f"host {where.get('host', '?')} in {where.get('folder', '?')}", str(run.path) if run.path else None)


def build_baseline(comparison: Comparison, thresholds: Mapping[str, Any] | None = None,
                   description: str | None = None) -> dict[str, Any]:
    """A baseline document from ``comparison`` (every scenario in it).

    Args:
        comparison: finished runs; each must be complete.
        thresholds: a ``thresholds`` block to keep (for example the one of the file being
            updated); the defaults when ``None``.
        description: optional free text kept in the file.

    Raises:
        MeasurementError: a run did not complete or holds no readings.
        UsageError: ``thresholds`` is malformed or names an unknown scenario or metric.
    """
    scenarios: dict[str, Any] = {}
    for item in comparison.runs:
        name = item.scenario.name
        _check_complete(name, item.run)
        per_rank = components_by_rank(item.run)
        if not per_rank:
            raise MeasurementError(f"scenario {name}: the run holds no readings", str(item.run.path) if item.run.path else None)
        scenarios[name] = {
            "definition": portable_definition(item.scenario),
            "definition_hash": item.scenario.definition_hash(),
            "environment_key": environment_key(item.run),
            **({"measured_with": {installed_engine(item.run): portable_installation(installation_of(item.run))}}
               if installation_of(item.run) else {}),
            "ranks": {
                str(rank): {metric: int(value) for metric, value in sorted(parts.items()) if value is not None}
                for rank, parts in sorted(per_rank.items())
            },
        }
    document: dict[str, Any] = {
        "schema_version": BASELINE_SCHEMA_VERSION,
        "memprobe_baseline": True,
        "scenarios": scenarios,
        "thresholds": json.loads(json.dumps(thresholds)) if thresholds is not None else default_thresholds(),
    }
    if description:
        document["description"] = description
    parse_document(document, "the new baseline")  # never write a file load_baseline would refuse
    return document


def baseline_text(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


@contextlib.contextmanager
def baseline_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock of the baseline file at ``path`` (through a symlink: its target's): two updates of one file
    (``-s A`` and ``-s B`` at once) take turns reading, merging and writing it, so neither loses the other's
    scenario. The lock is ``flock`` on the file's folder: a lock file beside the baseline would be one more file
    in the user's tree, and the baseline itself is replaced by a rename, so a lock on it would not hold."""
    import fcntl
    import os

    folder = Path(os.path.realpath(path)).parent
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # no folder yet: the write creates it and reports what goes wrong
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the lock


def write_baseline(path: str | Path, document: Mapping[str, Any]) -> bool:
    """Write ``document`` atomically and deterministically. Returns whether the file changed."""
    path = Path(path)
    parse_document(dict(document), str(path))
    text = baseline_text(document)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


# --------------------------------------------------------------------------- loading


def load_baseline(path: str | Path) -> Baseline:
    """Read and strictly check a baseline file.

    Raises:
        UsageError: one line naming the file and what is wrong (missing, empty, truncated or
            corrupt JSON, wrong schema, non-integer bytes, unknown keys, a definition that
            does not match its hash, thresholds naming unknown scenarios or metrics).
    """
    source = str(path)
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"baseline {source} is a directory, not a baseline file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"baseline {source} does not exist (make one with: memprobe baseline update --out {source} ...)") from None
    except OSError as error:
        raise UsageError(f"cannot read baseline {source}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"baseline {source} is not UTF-8 text") from None
    if not text.strip():
        raise UsageError(f"baseline {source} is empty")
    try:
        document = json.loads(text)
    except RecursionError:
        raise DamagedInput(f"baseline {source} is not a baseline: its JSON is nested too deeply") from None
    except json.JSONDecodeError as error:
        truncated = " (truncated?)" if not text.rstrip().endswith("}") else ""
        raise UsageError(
            f"baseline {source} is not valid JSON{truncated}: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    return parse_document(document, f"baseline {source}", source)


def _fail(where: str, message: str) -> UsageError:
    return DamagedInput(f"{where}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_keys(value: Any, path: str, where: str, required: set[str], allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"{path} must be an object")
    missing = sorted(required - set(value))
    if missing:
        raise _fail(where, f"{path} is missing {', '.join(missing)}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(where, f"{path} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return value


def scenario_from_definition(definition: Mapping[str, Any], name: str, where: str = "baseline") -> Scenario:
    """Rebuild a :class:`Scenario` from what :meth:`Scenario.definition` wrote (one place: Scenario.from_definition)."""
    if not isinstance(definition, Mapping):
        raise _fail(where, f"scenarios.{name}.definition must be an object")
    if definition.get("name") != name:
        raise _fail(where, f"scenarios.{name}.definition.name is {definition.get('name')!r}, not {name!r}")
    try:
        return Scenario.from_definition(definition, f"scenarios.{name}.definition")
    except UsageError as error:
        raise _fail(where, str(error)) from None


def _parse_rule(value: Any, path: str, where: str, scenario: str | None, metric: str | None,
                allow_metrics: bool) -> tuple[ThresholdRule, dict[str, Any]]:
    allowed = set(RULE_FIELDS) | ({"metrics"} if allow_metrics else set())
    value = _require_keys(value, path, where, set(), allowed)
    relative = value.get("relative")
    if relative is not None and (isinstance(relative, bool) or not isinstance(relative, (int, float))
                                 or not math.isfinite(relative) or relative < 0):
        raise _fail(where, f"{path}.relative must be a fraction >= 0 (0.05 = 5%), got {relative!r}")
    for key in ("absolute_bytes", "max_bytes"):
        number = value.get(key)
        if number is not None and (not _is_int(number) or number < 0):
            raise _fail(where, f"{path}.{key} must be a whole number of bytes >= 0, got {number!r}")
    ignore = value.get("ignore")
    if ignore is not None and not isinstance(ignore, bool):
        raise _fail(where, f"{path}.ignore must be true or false, got {ignore!r}")
    rule = ThresholdRule(
        scenario=scenario,
        metric=metric,
        relative=float(relative) if relative is not None else None,
        absolute_bytes=value.get("absolute_bytes"),
        max_bytes=value.get("max_bytes"),
        ignore=ignore,
    )
    metrics = value.get("metrics", {}) if allow_metrics else {}
    if not isinstance(metrics, dict):
        raise _fail(where, f"{path}.metrics must be an object of metric patterns")
    return rule, metrics


def check_metric_pattern(pattern: str, metrics: Iterable[str]) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(metric, pattern) for metric in metrics)


def parse_thresholds(value: Any, where: str, scenarios: Mapping[str, BaselineScenario]) -> tuple[ThresholdRule, ...]:
    """Rules of a ``thresholds`` block, checked against the baseline's scenarios and metrics."""
    block = _require_keys(value, "thresholds", where, {"default"}, _THRESHOLD_KEYS)
    all_metrics = {metric for scenario in scenarios.values() for metric in scenario.metric_names()}
    default, _ = _parse_rule(block["default"], "thresholds.default", where, None, None, allow_metrics=False)
    rules = [default]
    metric_block = block.get("metrics", {})
    if not isinstance(metric_block, dict):
        raise _fail(where, "thresholds.metrics must be an object of metric patterns")
    for pattern, settings in sorted(metric_block.items()):
        if not check_metric_pattern(pattern, all_metrics):
            raise _fail(where, f"thresholds.metrics pattern {pattern!r} matches no metric in the baseline")
        rule, _ = _parse_rule(settings, f"thresholds.metrics.{pattern}", where, None, pattern, allow_metrics=False)
        rules.append(rule)
    scenario_block = block.get("scenarios", {})
    if not isinstance(scenario_block, dict):
        raise _fail(where, "thresholds.scenarios must be an object of scenario names")
    for name, settings in sorted(scenario_block.items()):
        if name not in scenarios:
            raise _fail(where, f"thresholds.scenarios names {name!r}, which is not a scenario of the baseline")
        rule, nested = _parse_rule(settings, f"thresholds.scenarios.{name}", where, name, None, allow_metrics=True)
        rules.append(rule)
        for pattern, metric_settings in sorted(nested.items()):
            if not check_metric_pattern(pattern, scenarios[name].metric_names()):
                raise _fail(where, f"thresholds.scenarios.{name}.metrics pattern {pattern!r} matches no metric of {name}")
            nested_rule, _ = _parse_rule(metric_settings, f"thresholds.scenarios.{name}.metrics.{pattern}", where,
                                         name, pattern, allow_metrics=False)
            rules.append(nested_rule)
    return tuple(rules)


_HASH = re.compile(r"[0-9a-f]{16}")


def _parse_scenario(name: str, value: Any, where: str) -> BaselineScenario:
    try:
        validate_name(name)
    except UsageError as error:
        raise _fail(where, f"scenarios: {error}") from None
    value = _require_keys(value, f"scenarios.{name}", where, _SCENARIO_KEYS - {"measured_with"}, _SCENARIO_KEYS)
    scenario = scenario_from_definition(value["definition"], name, where)
    stored_hash = value["definition_hash"]
    if not isinstance(stored_hash, str) or not _HASH.fullmatch(stored_hash):
        raise _fail(where, f"scenarios.{name}.definition_hash must be 16 hex digits")
    if stored_hash != scenario.definition_hash():
        raise _fail(where, f"scenarios.{name}.definition_hash {stored_hash} does not match its definition "
                           f"({scenario.definition_hash()}); was the definition edited by hand?")
    key = _require_keys(value["environment_key"], f"scenarios.{name}.environment_key", where,
                        set(ENVIRONMENT_KEY_FIELDS), set(ENVIRONMENT_KEY_FIELDS) | {"nnodes"})
    for field_name, field_value in key.items():
        if field_name == "nccl_env":
            if not isinstance(field_value, dict) or not all(isinstance(v, str) for v in field_value.values()):
                raise _fail(where, f"scenarios.{name}.environment_key.nccl_env must be an object of strings")
        elif field_value is not None and not isinstance(field_value, (str, int)) or isinstance(field_value, bool):
            raise _fail(where, f"scenarios.{name}.environment_key.{field_name} must be a string, a number or null")
    _check_counts(key, f"scenarios.{name}.environment_key", where)
    ranks_value = value["ranks"]
    if not isinstance(ranks_value, dict) or not ranks_value:
        raise _fail(where, f"scenarios.{name}.ranks must be a non-empty object keyed by rank")
    ranks: dict[int, dict[str, int]] = {}
    for rank_text, metrics in ranks_value.items():
        if not isinstance(rank_text, str) or not rank_text.isdigit() or str(int(rank_text)) != rank_text:
            raise _fail(where, f"scenarios.{name}.ranks key {rank_text!r} is not a rank number")
        if not isinstance(metrics, dict) or not metrics:
            raise _fail(where, f"scenarios.{name}.ranks.{rank_text} must be a non-empty object of metric: bytes")
        for metric, number in metrics.items():
            if not _is_int(number) or abs(number) > MAX_BYTES:
                shown = repr(number) if not _is_int(number) else f"a number of {len(str(abs(number)))} digits"
                raise _fail(where, f"scenarios.{name}.ranks.{rank_text}.{metric} must be an integer number of bytes "
                                   f"(at most 2^63 - 1), got {shown}")
            if number < 0 and metric not in MAY_BE_NEGATIVE:
                raise _fail(where, f"scenarios.{name}.ranks.{rank_text}.{metric} must be a whole number of bytes >= 0, got {number!r}")
        ranks[int(rank_text)] = dict(metrics)
    _check_every_rank(name, ranks, scenario.layout.world_size, where)
    return BaselineScenario(
        name=name,
        definition=dict(value["definition"]),
        definition_hash=stored_hash,
        environment_key=dict(key),
        ranks=dict(sorted(ranks.items())),
        measured_with=_measured_with(value.get("measured_with", {}), f"scenarios.{name}.measured_with", where),
    )


def _check_counts(key: Mapping[str, Any], path: str, where: str) -> None:
    """GPUs per node and nodes are counts: an estimate is remade on them (at least one GPU and one node), a
    measured run records 0 GPUs on --device cpu."""
    estimated = key.get("sampling_mode") == "estimate"
    if estimated:
        from memprobe.estimate.model import MAX_GPUS_PER_NODE
    bounds = {"gpu_count": (1, MAX_GPUS_PER_NODE) if estimated else (0, MAX_COUNT), "nnodes": (1, MAX_COUNT)}
    for field_name, (lowest, highest) in bounds.items():
        number = key.get(field_name)
        if number is not None and (not _is_int(number) or not lowest <= number <= highest):
            raise _fail(where, f"{path}.{field_name} must be a whole number from {lowest} to {highest}, got {number!r}")


def _check_every_rank(name: str, ranks: dict[int, dict[str, int]], world_size: int, where: str) -> None:
    """A verdict needs every rank of the scenario's world, each with the same metrics (all ranks take the same
    steps): a rank or metric deleted by hand would otherwise never be judged."""
    absent = sorted(set(range(world_size)) - set(ranks))
    if absent:
        raise DamagedInput(f"{where}: scenarios.{name}.ranks lacks rank {', '.join(map(str, absent))} of the "
                           f"scenario's {world_size} ranks; a baseline holds every rank")
    extra = sorted(set(ranks) - set(range(world_size)))
    if extra:
        raise DamagedInput(f"{where}: scenarios.{name}.ranks holds rank {extra[0]}, outside the scenario's {world_size} ranks")
    every = set().union(*ranks.values())
    for rank, metrics in sorted(ranks.items()):
        lacking = sorted(every - set(metrics), key=metric_sort_key)
        if lacking:
            raise DamagedInput(f"{where}: scenarios.{name}.ranks.{rank} lacks {', '.join(lacking[:3])}"
                               f"{' and more' if len(lacking) > 3 else ''}, which the other ranks hold")


def _measured_with(value: Any, path: str, where: str) -> dict[str, Any]:
    installed = sorted(engine.name for engine in engines.all_engines() if engine.name_for("installed"))
    if not isinstance(value, dict) or set(value) - set(installed):
        raise _fail(where, f"{path} must be an object with at most the key {' or '.join(installed)}")
    return dict(value)


def parse_document(document: Any, where: str, source: str | None = None) -> Baseline:
    """Check a baseline document (already parsed JSON); ``where`` prefixes every error."""
    document = _require_keys(document, "the document", where, {"schema_version", "memprobe_baseline", "scenarios", "thresholds"}, _TOP_KEYS)
    if document["memprobe_baseline"] is not True:
        raise _fail(where, "not a memprobe baseline (memprobe_baseline must be true)")
    if document["schema_version"] != BASELINE_SCHEMA_VERSION:
        raise _fail(where, f"schema_version {document['schema_version']!r} is not {BASELINE_SCHEMA_VERSION}; "
                           f"this memprobe reads version {BASELINE_SCHEMA_VERSION}")
    if "description" in document and not isinstance(document["description"], str):
        raise _fail(where, "description must be a string")
    scenarios_value = document["scenarios"]
    if not isinstance(scenarios_value, dict) or not scenarios_value:
        raise _fail(where, "scenarios must be a non-empty object keyed by scenario name")
    scenarios = {name: _parse_scenario(name, value, where) for name, value in sorted(scenarios_value.items())}
    kinds = {name: memory_kind(scenario) for name, scenario in scenarios.items()}
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{name} {kind}" for name, kind in kinds.items())
        raise DamagedInput(f"{where}: mixes kinds of memory ({shown}); a baseline file holds one kind")
    rules = parse_thresholds(document["thresholds"], where, scenarios)
    return Baseline(source=source or where, scenarios=scenarios, rules=rules, document=document)


def check_same_kind(baseline: "Baseline", selected: list[str], kind: str, what: str) -> None:
    """Bytes of one kind of memory are never judged against another's, whatever --allow-env-mismatch says
    (it waives environment differences within one kind): one line, exit 4, before anything is measured."""
    for name in selected:
        recorded = memory_kind(baseline.scenarios[name])
        if recorded != kind:
            raise IncomparableError(f"baseline {baseline.source} scenario {name} holds {describe_kind(recorded)}; {what} "
                                    f"{describe_kind(kind)}: never judged against each other (record a baseline of that kind)")


# --------------------------------------------------------------------------- display order


def metric_sort_key(metric: str) -> tuple:
    """Component keys in the order a worker takes its steps (totals last)."""
    fixed = {"cuda_context": (0,), "world": (1,), "unattributed": (4,), "total_after_init": (5,),
             "total_after_first_use": (6,)}
    if metric in fixed:
        return fixed[metric] + ("",)
    group, _, step = metric.partition("/")
    order = engines.group_order(engines.names())
    group_index = order.index(group) if group in order else len(order)
    init_steps = (GROUPS_CREATED, *(kind.name for kind in engines.kinds(engines.names())), "init")
    if step in init_steps:
        return (2, group_index, group, init_steps.index(step))
    if step == "first_use":
        return (3, group_index, group)
    return (7, metric)

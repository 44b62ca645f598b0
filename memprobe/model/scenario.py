"""Scenarios (a layout, a stack and an environment) and the comparisons built from them.

Scenario files are TOML::

    baseline = "tp4"            # optional; the first scenario otherwise

    [defaults]                  # optional, applies to every scenario
    env_preset = "sglang"
    warmup = "tiny"

    [[scenario]]
    name = "tp4-ep2-full"
    tp = 4
    ep = 2
    stack = "full"
    [scenario.env]
    NCCL_BUFFSIZE = "1048576"
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memprobe.errors import UsageError
from memprobe.model.layout import LAYOUT_FIELDS, Layout

ENV_PRESETS: dict[str, dict[str, str]] = {
    # What SGLang's engine sets unless the user already did (entrypoints/engine.py:1878-1921).
    "sglang": {
        "NCCL_CUMEM_ENABLE": "0",
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
        "CUDA_DEVICE_MAX_CONNECTIONS": "8",
    },
    "none": {},
}
WARMUPS: tuple[str, ...] = ("none", "tiny", "sweep")
ENGINES: tuple[str, ...] = ("memprobe", "sglang")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_env_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> dict; one clear error for anything else."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise UsageError(f"--env {item!r} is not KEY=VALUE (KEY: letters, digits and _, not starting with a digit)")
        env[key] = value
    return env


def validate_name(name: str, what: str = "scenario name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"{what} {name!r} must start with a letter or digit and use only letters, digits, '.', '_' and '-'")
    return name


@dataclass(frozen=True)
class Scenario:
    name: str
    layout: Layout
    stack: str = "lean"
    env_preset: str = "sglang"
    env: dict[str, str] = field(default_factory=dict)
    warmup: str = "tiny"
    engine: str = "memprobe"

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.engine not in ENGINES:
            raise UsageError(f"scenario {self.name}: engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.env_preset not in ENV_PRESETS:
            raise UsageError(f"scenario {self.name}: env_preset {self.env_preset!r} is not one of {sorted(ENV_PRESETS)}")
        if self.warmup not in WARMUPS:
            raise UsageError(f"scenario {self.name}: warmup {self.warmup!r} is not one of {list(WARMUPS)}")
        for key, value in self.env.items():
            if not _ENV_KEY.match(key) or not isinstance(value, str):
                raise UsageError(f"scenario {self.name}: env {key}={value!r} must be a string variable name and a string value")

    def definition(self) -> dict[str, Any]:
        document = {
            "name": self.name,
            "layout": self.layout.as_dict(),
            "stack": self.stack,
            "env_preset": self.env_preset,
            "env": dict(sorted(self.env.items())),
            "warmup": self.warmup,
        }
        if self.engine != "memprobe":  # only when set, so definitions (and hashes) of earlier baselines stay valid
            document["engine"] = self.engine
        return document

    def definition_hash(self) -> str:
        """Hash of what the scenario measures (asv's benchmark ``version``): a changed definition is incomparable."""
        document = self.definition()
        document.pop("name")
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScenarioSet:
    scenarios: tuple[Scenario, ...]
    baseline: str

    def __post_init__(self) -> None:
        names = [scenario.name for scenario in self.scenarios]
        if not names:
            raise UsageError("no scenarios to run")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise UsageError(f"scenario names must be unique; repeated: {', '.join(duplicates)}")
        if self.baseline not in names:
            raise UsageError(f"baseline scenario {self.baseline!r} is not among {', '.join(names)}")

    def get(self, name: str) -> Scenario:
        for scenario in self.scenarios:
            if scenario.name == name:
                return scenario
        raise UsageError(f"unknown scenario {name!r}; known: {', '.join(s.name for s in self.scenarios)}")


_SCENARIO_KEYS = set(LAYOUT_FIELDS) | {"name", "stack", "env_preset", "env", "warmup", "engine"}


def _scenario_from_table(table: dict[str, Any], defaults: dict[str, Any], source: str) -> Scenario:
    merged = {**defaults, **table}
    unknown = set(merged) - _SCENARIO_KEYS
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {sorted(unknown)} in scenario {table.get('name', '?')!r}")
    if "name" not in merged or "tp" not in merged:
        raise UsageError(f"{source}: every [[scenario]] needs name and tp")
    env = merged.get("env", {})
    if not isinstance(env, dict):
        raise UsageError(f"{source}: scenario {merged['name']!r}: env must be a table of strings")
    try:
        layout = Layout(**{key: merged[key] for key in LAYOUT_FIELDS if key in merged})
    except UsageError as error:
        raise UsageError(f"{source}: scenario {merged['name']!r}: {error}") from None
    return Scenario(
        name=merged["name"],
        layout=layout,
        stack=str(merged.get("stack", "lean")),
        env_preset=str(merged.get("env_preset", "sglang")),
        env={str(k): str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in env.items()},
        warmup=str(merged.get("warmup", "tiny")),
        engine=str(merged.get("engine", "memprobe")),
    )


def load_scenario_file(path: str | Path) -> ScenarioSet:
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"cannot read scenario file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"scenario file {path} is not valid TOML: {error}") from None
    unknown = set(document) - {"baseline", "defaults", "scenario", "description"}
    if unknown:
        raise UsageError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
    defaults = document.get("defaults", {})
    tables = document.get("scenario", [])
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{path}: needs at least one [[scenario]] table")
    scenarios = tuple(_scenario_from_table(table, defaults, str(path)) for table in tables)
    return ScenarioSet(scenarios=scenarios, baseline=str(document.get("baseline", scenarios[0].name)))


def with_engines(scenario_set: ScenarioSet, engines: list[str]) -> ScenarioSet:
    """Every scenario once per engine; SGLang's copies are named ``<name>.sglang``."""
    if engines == ["memprobe"]:
        return scenario_set
    scenarios = []
    for scenario in scenario_set.scenarios:
        for engine in engines:
            name = scenario.name if engine == "memprobe" else f"{scenario.name}.{engine}"
            scenarios.append(replace(scenario, name=name, engine=engine))
    baseline = scenario_set.baseline if "memprobe" in engines else f"{scenario_set.baseline}.{engines[0]}"
    return ScenarioSet(scenarios=tuple(scenarios), baseline=baseline)


def headline_scenarios(tp: int, ep: int, stacks: list[str], pp: int = 1, moe_dp: int = 1, attn_dp: int = 1,
                       attn_cp: int = 1, baseline_tp: int | None = None, env_preset: str = "sglang",
                       env: dict[str, str] | None = None, warmup: str = "tiny") -> ScenarioSet:
    """``--tp T`` as the baseline (no MoE groups of its own), then the MoE layout once per stack."""
    env = dict(env or {})
    baseline_layout = Layout(tp=baseline_tp or tp, pp=pp, attn_dp=attn_dp, attn_cp=attn_cp)
    moe_layout = Layout(tp=tp, ep=ep, pp=pp, moe_dp=moe_dp, attn_dp=attn_dp, attn_cp=attn_cp)
    baseline = Scenario(name=baseline_layout.slug(), layout=baseline_layout, stack="lean", env_preset=env_preset,
                        env=env, warmup=warmup)
    scenarios = [baseline]
    for stack in stacks:
        label = Path(stack).stem if stack.endswith(".toml") else stack.replace(":", "-")
        scenarios.append(Scenario(name=f"{moe_layout.slug()}-{label}", layout=moe_layout, stack=stack,
                                  env_preset=env_preset, env=env, warmup=warmup))
    return ScenarioSet(scenarios=tuple(scenarios), baseline=baseline.name)

"""Scenarios (an engine, its layout, a stack and an environment) and the comparisons built from them.

Scenario files are TOML::

    baseline = "tp4"            # optional; the first scenario otherwise

    [defaults]                  # optional, applies to every scenario
    env_preset = "sglang"
    warmup = "tiny"

    [[scenario]]
    name = "tp4-ep2-full"       # engine = "memprobe" (sglang-ref) unless given; the widths are the engine's
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
from typing import Any, Callable, Mapping

from memprobe import engines
from memprobe.engines.api import EngineRef, LayoutBase
from memprobe.engines.stacks import Stack, stack_from_record
from memprobe.errors import UsageError

WARMUPS: tuple[str, ...] = ("none", "tiny", "sweep")
#: 2: stack resolved to flags, engine and sglang always present. ``engine`` names the engine and its mode as
#: records keep it (``memprobe``: SGLang's reference), ``layout`` holds that engine's widths, and ``sglang`` the
#: site folder of an installed engine (not hashed); so SGLang's scenarios keep the hashes of every earlier memprobe.
DEFINITION_SCHEMA = 2
_DEFINITION_KEYS = ("schema", "name", "layout", "stack", "env_preset", "env", "warmup", "engine", "sglang")
DEFAULT_ENGINE = "memprobe"
#: The stack of an installed engine's own decisions (memprobe forces nothing on its groups).
INSTALLED_STACK = "installed"


def env_presets() -> dict[str, dict[str, str]]:
    """``--env-preset`` choices: ``none`` and every registered engine's presets (what it sets unless the user did)."""
    presets: dict[str, dict[str, str]] = {"none": {}}
    for engine in engines.all_engines():
        presets.update({name: dict(values) for name, values in engine.env_presets.items()})
    return presets
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # always fullmatch: "$" would let a trailing newline in
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Names become folder names (a run folder is "<UTC time>-<name>"; Linux allows 255 bytes per name).
MAX_NAME_LENGTH = 100
#: Every process of a launch gets the scenario's variables; Linux refuses a single environment string over
#: 128 KiB (MAX_ARG_STRLEN, execve: E2BIG), and NCCL and CUDA settings are short.
MAX_ENV_VALUE_BYTES = 32 * 1024


def parse_env_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> dict; one clear error for anything else."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise UsageError(f"--env {item!r} is not KEY=VALUE (KEY: letters, digits and _, not starting with a digit)")
        env[key] = value
    return env


def validate_name(name: str, what: str = "scenario name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"{what} {name!r} must start with a letter or digit and use only letters, digits, '.', '_' and '-'")
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(f"{what} {name[:20]}... is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
    return name


def name_safe(text: str) -> str:
    """``text`` (a release such as ``0.11.1.dev3+g0a1b2c``) as a name :func:`validate_name` accepts: every other
    character ``-``, leading separators dropped, cut to the longest name; "" where nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip("._-")[:MAX_NAME_LENGTH]


@dataclass(frozen=True)
class Scenario:
    """What one launch measures. Its identity (:meth:`definition`) is built here and nowhere else.

    ``engine`` is a name :func:`memprobe.engines.get` knows (kept as records keep it: ``sglang-ref`` becomes
    ``memprobe``) and ``layout`` that engine's layout. ``stack`` is what the user wrote (``lean``, ``full:v1``, a
    TOML path); ``resolved_stack`` the flags it stands for, resolved once at construction (or given, when rebuilt
    from a record: no file is read again). ``sglang`` is the installation asked for with an installed engine
    (``--engine sglang``, ``--engine vllm``): a site folder put first on the workers' ``PYTHONPATH``, or "" for the
    importable one (the field keeps its first engine's name, as every record holds it).
    """

    name: str
    layout: LayoutBase
    stack: str = "lean"
    env_preset: str = "sglang"
    env: dict[str, str] = field(default_factory=dict)
    warmup: str = "tiny"
    engine: str = DEFAULT_ENGINE
    sglang: str = ""
    resolved_stack: Stack | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        validate_name(self.name)
        ref = engines.get(self.engine, where=f"scenario {self.name}: engine")
        object.__setattr__(self, "engine", ref.name)
        engine = ref.engine
        if not isinstance(self.layout, engine.layout_type):
            raise UsageError(f"scenario {self.name}: engine {ref.name} takes {engine.label}'s widths "
                             f"({', '.join(engine.layout_type.flag_of(n) for n in engine.layout_type.field_names())})")
        if self.resolved_stack is None:
            object.__setattr__(self, "resolved_stack",
                               engine.resolve_stack(self.stack, option=f"scenario {self.name}: stack"))
        problem = engine.stack_problem(self.layout, self.resolved_stack)
        if problem is not None:  # the stack's release lacks a flag of the layout
            raise UsageError(f"scenario {self.name}: {problem}")
        installed_name = next((name for name, mode in engine.names.items() if mode == "installed"), None)
        if self.stack == "installed" and not ref.installed:
            raise UsageError(f"scenario {self.name}: stack 'installed' ({engine.label}'s own flags) needs engine "
                             f"{installed_name}")
        if ref.installed and not engine.installed_takes_stacks and self.stack != INSTALLED_STACK:
            raise UsageError(f"scenario {self.name}: engine {ref.name} runs {engine.label}'s own code, which memprobe "
                             f"does not change: its stack is '{INSTALLED_STACK}' (stack {self.stack!r} is for engine "
                             f"{engine.name_for('reference')})")
        if self.sglang and not ref.installed:
            raise UsageError(f"scenario {self.name}: an {engine.label} installation ({self.sglang}) needs engine "
                             f"{installed_name}")
        presets = env_presets()
        if self.env_preset not in presets:
            raise UsageError(f"scenario {self.name}: env_preset {self.env_preset!r} is not one of {sorted(presets)}")
        if self.warmup not in WARMUPS:
            raise UsageError(f"scenario {self.name}: warmup {self.warmup!r} is not one of {list(WARMUPS)}")
        for key, value in self.env.items():
            if not isinstance(key, str) or not _ENV_KEY.fullmatch(key) or not isinstance(value, str):
                raise UsageError(f"scenario {self.name}: env {key}={value!r} must be a string variable name and a string value")
            if "\0" in value:  # no process environment can hold one (execve's strings end at NUL)
                raise UsageError(f"scenario {self.name}: env {key} holds a NUL character")
            if len(value.encode("utf-8", "surrogateescape")) > MAX_ENV_VALUE_BYTES:
                raise UsageError(f"scenario {self.name}: env {key} is {len(value.encode('utf-8', 'surrogateescape'))} bytes "
                                 f"long; at most {MAX_ENV_VALUE_BYTES}")

    def definition(self) -> dict[str, Any]:
        """The scenario's identity, as run.json, comparison.json and baselines record it (schema 2).

        ``stack`` holds the label the user gave and, under ``resolved``, the flags of every group and the
        custom all-reduce layout: the identity is what is built, not what it is called.
        """
        assert self.resolved_stack is not None
        return {  # the keys and values of schema 2, whatever the engine: SGLang's hashes never change
            "schema": DEFINITION_SCHEMA,
            "name": self.name,
            "layout": self.layout.as_dict(),
            "stack": {"label": self.stack, "name": self.resolved_stack.name, "resolved": self.resolved_stack.identity()},
            "env_preset": self.env_preset,
            "env": dict(sorted(self.env.items())),
            "warmup": self.warmup,
            "engine": self.engine,
            "sglang": self.sglang,
        }

    @staticmethod
    def hashed_part(definition: Mapping[str, Any]) -> dict[str, Any]:
        """What of a definition enters :meth:`definition_hash` (and what a gate compares)."""
        document = {key: value for key, value in definition.items() if key not in ("name", "sglang")}
        if isinstance(document.get("stack"), Mapping):
            document["stack"] = document["stack"].get("resolved")
        return document

    @property
    def engine_ref(self) -> EngineRef:
        return engines.get(self.engine)

    def definition_hash(self) -> str:
        """Hash of what the scenario measures (asv's benchmark ``version``): a changed definition is incomparable.

        Names and labels do not enter it, nor which SGLang installation is asked for: a gate re-measures
        a baseline recorded with SGLang against the SGLang under test, which is the change it judges.
        """
        document = self.hashed_part(self.definition())
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_definition(cls, definition: Mapping[str, Any], where: str, name: str | None = None) -> "Scenario":
        """Rebuild a scenario from :meth:`definition`'s document (run.json, comparison.json, a baseline).

        Raises :class:`UsageError` naming ``where`` for anything malformed or from an older memprobe.
        """
        document = dict(definition)
        if document.get("schema") != DEFINITION_SCHEMA:
            raise UsageError(f"{where}: scenario definition schema {document.get('schema')!r} is not {DEFINITION_SCHEMA} "
                             f"(made by an older memprobe; record it again, e.g. memprobe baseline update --from RUN_DIR)")
        unknown = set(document) - set(_DEFINITION_KEYS)
        missing = set(_DEFINITION_KEYS) - set(document)
        if unknown or missing:
            raise UsageError(f"{where}: scenario definition has unknown key(s) {sorted(unknown)} / lacks {sorted(missing)}")
        stack = document["stack"]
        if not isinstance(stack, dict) or not {"label", "name", "resolved"} <= set(stack) or not isinstance(stack["resolved"], dict):
            raise UsageError(f"{where}: scenario definition's stack must hold label, name and resolved")
        layout = document["layout"]
        # whole numbers (widths), true/false (vLLM's --moe) and names (vLLM's --all2all-backend); the engine's
        # layout type checks which field takes which
        if not isinstance(layout, dict) or not all(isinstance(v, (int, str)) for v in layout.values()):
            raise UsageError(f"{where}: scenario definition's layout must be an object of whole numbers, switches "
                             f"and names")
        for key in ("env_preset", "warmup", "engine", "sglang"):
            if not isinstance(document[key], str):
                raise UsageError(f"{where}: scenario definition's {key} must be a string")
        if not isinstance(document["env"], dict):
            raise UsageError(f"{where}: scenario definition's env must be an object of strings")
        engine = engines.get(document["engine"], where=f"{where}: engine").engine
        resolved = stack_from_record(engine, {"name": stack["name"], **stack["resolved"]}, where)
        try:
            return cls(name=name or document["name"], layout=engine.layout_type(**layout), stack=str(stack["label"]),
                       env_preset=document["env_preset"], env=dict(document["env"]), warmup=document["warmup"],
                       engine=document["engine"], sglang=document["sglang"], resolved_stack=resolved)
        except TypeError as error:
            raise UsageError(f"{where}: scenario definition's layout: {error}") from None
        except UsageError as error:
            raise UsageError(f"{where}: {error}") from None


def definition_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted.key, before, after)`` for every hashed value that differs between two definitions."""
    def flatten(value: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            return {prefix: value}
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat

    old, new = flatten(Scenario.hashed_part(before), ""), flatten(Scenario.hashed_part(after), "")
    return [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


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


_SCENARIO_KEYS = {"name", "stack", "env_preset", "env", "warmup", "engine", "sglang", "vllm"}
#: The key a scenario file names an installed engine's site with (``sglang = SITE``, ``vllm = SITE``).
_SITE_KEYS = ("sglang", "vllm")


def _scenario_from_table(table: dict[str, Any], defaults: dict[str, Any], source: str) -> Scenario:
    merged = {**defaults, **table}
    ref = engines.get(str(merged.get("engine", DEFAULT_ENGINE)),
                      where=f"{source}: scenario {table.get('name', '?')!r}: engine")
    widths = ref.engine.layout_type.field_names()
    unknown = set(merged) - _SCENARIO_KEYS - set(widths)
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {sorted(unknown)} in scenario {table.get('name', '?')!r}")
    for key in _SITE_KEYS:
        if merged.get(key) and key != ref.engine.name:
            raise UsageError(f"{source}: scenario {table.get('name', '?')!r}: {key} = SITE needs engine {key}")
    if "name" not in merged or widths[0] not in merged:
        raise UsageError(f"{source}: every [[scenario]] needs name and {widths[0]}")
    env = merged.get("env", {})
    if not isinstance(env, dict):
        raise UsageError(f"{source}: scenario {merged['name']!r}: env must be a table of strings")
    try:
        layout = ref.engine.layout_type(**{key: merged[key] for key in widths if key in merged})
    except UsageError as error:
        raise UsageError(f"{source}: scenario {merged['name']!r}: {error}") from None
    return Scenario(
        name=merged["name"],
        layout=layout,
        stack=str(merged.get("stack", _default_stack(ref))),
        env_preset=str(merged.get("env_preset", ref.engine.default_env_preset)),
        env={str(k): str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in env.items()},
        warmup=str(merged.get("warmup", "tiny")),
        engine=str(merged.get("engine", DEFAULT_ENGINE)),
        sglang=str(merged.get(ref.engine.name if ref.engine.name in _SITE_KEYS else "sglang", "")),
    )


def load_scenario_file(path: str | Path) -> ScenarioSet:
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"cannot read scenario file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"scenario file {path} is not UTF-8 text (byte {error.start})") from None
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


def with_env(scenario_set: ScenarioSet, env: dict[str, str]) -> ScenarioSet:
    """``--env`` on top of every scenario's own ``env`` (it wins), so it is part of each identity."""
    if not env:
        return scenario_set
    scenarios = tuple(replace(s, env={**s.env, **env}) for s in scenario_set.scenarios)
    return ScenarioSet(scenarios=scenarios, baseline=scenario_set.baseline)


def with_engines(scenario_set: ScenarioSet, names: list[str]) -> ScenarioSet:
    """Every scenario once per engine (``--engine memprobe,sglang``); a scenario's copy on another engine than its
    own is named ``<name>.<engine>`` (``tp2.sglang``)."""
    stored = list(dict.fromkeys(engines.get(name).name for name in names))
    own = {scenario.engine for scenario in scenario_set.scenarios}
    if stored == [DEFAULT_ENGINE] or (len(own) == 1 and stored == list(own)):  # the default: as the scenarios say
        return scenario_set
    scenarios: dict[str, Scenario] = {}
    renamed: dict[tuple[str, str], str] = {}
    for scenario in scenario_set.scenarios:
        if scenario.engine_ref.installed:  # already an installed engine's scenario (compare --sglang LABEL=PATH)
            scenarios[scenario.name] = scenario
            continue
        for engine in stored:
            copy = _on_engine(scenario, engine)
            renamed[(scenario.name, engine)] = copy.name
            scenarios.setdefault(copy.name, copy)  # one per layout where the engine takes no stack
    base = scenario_set.get(scenario_set.baseline)
    baseline = scenario_set.baseline if base.engine in stored else renamed[(scenario_set.baseline, stored[0])]
    return ScenarioSet(scenarios=tuple(scenarios.values()), baseline=baseline)


def _default_stack(ref: EngineRef) -> str:
    """A scenario's stack when none is given: an installed engine that takes no stack runs its own."""
    return INSTALLED_STACK if ref.installed and not ref.engine.installed_takes_stacks else ref.engine.default_stack


def _on_engine(scenario: Scenario, engine: str) -> Scenario:
    """``scenario`` on ``engine``; an installed engine that takes no stack runs its own (:func:`on_own_flags`)."""
    if engine == scenario.engine:
        return scenario
    ref = engines.get(engine)
    if ref.installed and not ref.engine.installed_takes_stacks:
        return on_own_flags(scenario, engine)
    return replace(scenario, name=f"{scenario.name}.{engine}", engine=engine)


def on_own_flags(scenario: Scenario, engine: str, site: str | None = None, resolved_stack: Any = None) -> Scenario:
    """``scenario`` on an installed engine deciding with its own code (stack ``installed``): one per layout, so named
    ``<layout>.<engine>`` (``tp2-moe.vllm``); ``site``: where that engine is installed (None: as the scenario says)."""
    return replace(scenario, name=f"{scenario.layout.slug()}.{engine}", engine=engine, stack=INSTALLED_STACK,
                   resolved_stack=resolved_stack, sglang=scenario.sglang if site is None else site)


def parse_sites(items: list[str] | tuple[str, ...], flag: str = "--sglang",
                label_of: Callable[[str], str] | None = None) -> list[tuple[str, str]]:
    """``["LABEL=PATH" or "PATH", ...]`` (compare's ``--sglang``, ``--vllm``) -> ``[(label, path)]``; labels unique
    and name-safe. A bare PATH (an existing folder, as run, estimate and gate take it) is labelled by ``label_of``."""
    sites: list[tuple[str, str]] = []
    example = "0.33.0=/opt/vllm-0.33.0" if flag == "--vllm" else "0.5.11=/opt/sgl-0.5.11"
    for item in items:
        label, sep, path = item.partition("=")
        if not sep and label_of is not None and Path(item).is_dir():
            label, path = label_of(item), item
        elif not sep or not label or not path:
            raise UsageError(f"{flag} {item!r} is neither LABEL=PATH nor an existing folder "
                             f"(e.g. {flag} {example} or {flag} {example.partition('=')[2]})")
        validate_name(label, f"{flag} label")
        if label in [known for known, _ in sites]:
            raise UsageError(f"{flag} label {label!r} is given twice")
        sites.append((label, path))
    return sites


def with_site(scenario_set: ScenarioSet, engine: str, site: str) -> ScenarioSet:
    """Every installed scenario of ``engine`` (``sglang``, ``vllm``) re-pointed at the installation in ``site``
    (kept in the scenario's ``sglang`` field, the installation's site whatever the engine)."""
    scenarios = tuple(replace(s, sglang=site) if s.engine_ref.installed and s.engine_ref.engine.name == engine else s
                      for s in scenario_set.scenarios)
    return ScenarioSet(scenarios=scenarios, baseline=scenario_set.baseline)


def stack_label(spec: str, resolved_name: str | None = None) -> str:
    """What a scenario's name says of its stack: a TOML file's stem, else the stack's name (``resolved_name``
    where given, as ``memprobe run`` names its scenario after the stack it measures) with ``:`` as ``-``."""
    if spec.endswith(".toml"):
        return Path(spec).stem
    return (resolved_name or spec).replace(":", "-")


def headline_scenarios(engine: str, widths: Mapping[str, int | None], stacks: list[str], baseline_tp: int | None = None,
                       env_preset: str = "sglang", env: dict[str, str] | None = None, warmup: str = "tiny",
                       sglang_sites: list[tuple[str, str]] | tuple = ()) -> ScenarioSet:
    """The engine's reference layout (:meth:`Engine.headline_layouts`: for SGLang ``--tp T``, no MoE groups of its
    own) as the baseline, then the compared layout once per stack, then once per installation of the engine
    (``<slug>.sglang-<LABEL>``: stack ``installed``, the engine's own flags)."""
    env = dict(env or {})
    if baseline_tp is not None and (isinstance(baseline_tp, bool) or not isinstance(baseline_tp, int) or baseline_tp < 1):
        raise UsageError(f"--baseline-tp must be a whole number >= 1, got {baseline_tp!r}")  # 0 is no "default"
    ref = engines.get(engine)
    baseline_layout, layout = ref.engine.headline_layouts(widths, baseline_tp)
    common: dict[str, Any] = {"env_preset": env_preset, "env": env, "warmup": warmup, "engine": ref.name}
    scenarios = []
    if baseline_layout is not None:
        scenarios.append(Scenario(name=baseline_layout.slug(), layout=baseline_layout,
                                  stack=ref.engine.default_stack, **common))
    for stack in stacks:
        scenarios.append(Scenario(name=f"{layout.slug()}-{stack_label(stack)}", layout=layout, stack=stack, **common))
    installed = next((name for name, mode in ref.engine.names.items() if mode == "installed"), None)
    for label, site in sglang_sites:
        if installed is None:
            raise UsageError(f"engine {ref.name} has no installed mode for --sglang {label}")
        scenarios.append(Scenario(name=f"{layout.slug()}.{installed}-{label}", layout=layout, stack="installed",
                                  **{**common, "engine": installed}, sglang=site))
    return ScenarioSet(scenarios=tuple(scenarios), baseline=scenarios[0].name)

"""Record the process groups SGLang's own ``initialize_model_parallel`` builds, for many layouts.

This writes ``tests/fixtures/sglang-0.5.23-layouts.json``, the ground truth that
``tests/test_layout.py`` checks ``memprobe.engines.sglang.layout.plan_groups`` and
``memprobe.engines.sglang.stacks.LEAN`` against.

How it works (no GPU, no torch, no sglang install needed):

* The source of ``initialize_model_parallel`` and ``init_model_parallel_group``
  is cut out of SGLang's ``sglang/srt/distributed/parallel_state.py`` with
  ``ast``, and ``derive_attn_tp_size`` / ``derive_parallel_widths`` out of
  ``sglang/srt/runtime_context.py``. Those functions run unchanged: their loops,
  width arithmetic, alias decisions and the ``None`` defaulting of the flags
  are SGLang's code.
* The one instrumentation: every assignment to one of the group globals
  (``_TP``, ``_ATTN_CP``, ``_ATTN_TP``, ``_MOE_DP``, ``_MOE_EP``, ``_MOE_TP``,
  ``_PP``, ``_SELF_PP``, ...) has its right-hand side wrapped in a recorder, so the
  fixture says, in order, which global was assigned, and whether from a new
  coordinator (which call) or from another global (``_MOE_DP = _ATTN_CP`` gives
  ``alias_of: "attn_cp"``). After the call the aliases are cross-checked by
  object identity of the module globals.
* Everything the functions reach outside themselves is stubbed:
  ``GroupCoordinator`` records ``group_name``, ``group_ranks``, ``use_pynccl``
  and ``use_custom_allreduce`` (already defaulted by SGLang's
  ``init_model_parallel_group``) and returns a fresh sentinel per call;
  ``get_parallel()`` publishes the widths (``attn_dcp_size=1``,
  ``shared_experts_tp_size=None``); ``torch.distributed`` reports an
  initialised world of ``tp*pp`` ranks on ``nccl``; the module switches keep
  the values ``parallel_state.py`` assigns at import
  (``_ENABLE_CUSTOM_ALL_REDUCE = True``, ...); the platform is CUDA
  (``_is_npu = _is_xpu = False``, in-tree platform);
  ``SGLANG_USE_MESSAGE_QUEUE_BROADCASTER`` is its default True;
  ``SYNC_TOKEN_IDS_ACROSS_TP`` (an env var, unset by default) is False;
  ``enable_symm_mem`` and ``duplicate_tp_group`` keep their defaults (False).

Regenerate (from the repository root)::

    pip download --no-deps sglang==0.5.23 -d /tmp/sgl-wheel
    mkdir -p /tmp/sgl && unzip -q -o /tmp/sgl-wheel/sglang-0.5.23-*.whl -d /tmp/sgl
    python tools/sglang_layouts.py /tmp/sgl            # or pass the .whl itself

The output is deterministic (sorted keys, no timestamps): rerunning on the
same wheel gives the same bytes. The SGLang version is read from the wheel's
``*.dist-info/METADATA`` (or ``sglang/version.py``); pass ``--sglang-version``
when only the two source files are at hand. The script refuses a version
other than ``--expect-version`` (default 0.5.23) unless that is set to ``""``.
"""

from __future__ import annotations

import __future__
import argparse
import ast
import builtins
import hashlib
import itertools
import json
import re
import sys
import types
import typing
import zipfile
from pathlib import Path

PARALLEL_STATE = "sglang/srt/distributed/parallel_state.py"
RUNTIME_CONTEXT = "sglang/srt/runtime_context.py"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sglang-0.5.23-layouts.json"

#: Module global -> the group name memprobe uses (and SGLang passes as group_name).
GROUP_GLOBALS: dict[str, str] = {
    "_TP": "tp",
    "_ATTN_CP": "attn_cp",
    "_ATTN_TP": "attention_tp",
    "_MOE_DP": "moe_dp",
    "_MOE_EP": "moe_ep",
    "_MOE_TP": "moe_tp",
    "_PP": "pp",
    "_SELF_PP": "self_pp",
}
#: Globals the function may also assign; off in every recorded layout (must stay None).
OFF_GLOBALS: dict[str, str] = {
    "_DCP": "dcp",
    "_SHARED_EXPERTS_TP": "shared_experts_tp",
    "_PDMUX_PREFILL_TP_GROUP": "pdmux_prefill_tp",
}
MODULE_SWITCHES = ("_ENABLE_CUSTOM_ALL_REDUCE", "_ENABLE_MSCCLPP", "_ENABLE_TORCH_SYMM_MEM_ALL_REDUCE")

TP_SIZES = (1, 2, 3, 4, 6, 8, 16)
PP_SIZES = (1, 2, 3, 4)


# --------------------------------------------------------------------------- sources


class Sources:
    """The SGLang files this needs, from an unpacked wheel directory or the .whl itself."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file() and path.suffix == ".whl":
            self._zip: zipfile.ZipFile | None = zipfile.ZipFile(path)
        elif path.is_dir():
            self._zip = None
        else:
            raise SystemExit(f"{path}: expected an unpacked sglang wheel (a folder holding sglang/) or a .whl file")

    def read(self, name: str) -> bytes | None:
        if self._zip is not None:
            try:
                return self._zip.read(name)
            except KeyError:
                return None
        file = self.path / name
        return file.read_bytes() if file.is_file() else None

    def names(self) -> list[str]:
        if self._zip is not None:
            return self._zip.namelist()
        return [str(p.relative_to(self.path)) for p in self.path.glob("*.dist-info/METADATA")]

    def version(self) -> str | None:
        for name in self.names():
            if re.fullmatch(r"sglang-[^/]+\.dist-info/METADATA", name):
                match = re.search(rb"^Version: *(\S+)", self.read(name) or b"", re.M)
                if match:
                    return match.group(1).decode()
        text = self.read("sglang/version.py")
        if text:
            match = re.search(rb"__version__\s*=\s*['\"]([^'\"]+)", text)
            if match:
                return match.group(1).decode()
        return None


def _function_defs(tree: ast.Module, names: set[str]) -> dict[str, ast.FunctionDef]:
    found = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names}
    missing = names - set(found)
    if missing:
        raise SystemExit(f"function(s) {sorted(missing)} not found at module level")
    return found


def _module_constants(tree: ast.Module, names: tuple[str, ...]) -> dict[str, object]:
    """Values of ``NAME = <literal>`` module-level assignments (the import-time switches)."""
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in names:
                values[node.targets[0].id] = ast.literal_eval(node.value)
    missing = set(names) - set(values)
    if missing:
        raise SystemExit(f"module switch(es) {sorted(missing)} not found in parallel_state.py")
    return values


class _WrapGroupStores(ast.NodeTransformer):
    """``_X = <expr>``  ->  ``_X = __memprobe_store__("_X", <expr>, "_Y" | None)``.

    Only the right-hand side is wrapped; control flow and arithmetic are SGLang's.
    """

    def __init__(self, tracked: set[str]) -> None:
        self.tracked = tracked
        self.wrapped = 0

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        self.generic_visit(node)
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and node.targets[0].id in self.tracked:
            source = node.value.id if isinstance(node.value, ast.Name) else None
            node.value = ast.copy_location(
                ast.Call(
                    func=ast.Name("__memprobe_store__", ast.Load()),
                    args=[ast.Constant(node.targets[0].id), node.value, ast.Constant(source)],
                    keywords=[],
                ),
                node.value,
            )
            self.wrapped += 1
        return node


# --------------------------------------------------------------------------- stubs


class _Recorded:
    """Stands in for a GroupCoordinator: one fresh object per init_model_parallel_group call."""

    def __init__(self, index: int, kwargs: dict) -> None:
        self.call_index = index
        self.kwargs = kwargs
        self.rank_in_group = 0
        self.pynccl_comm = None
        self.local_rank = 0
        self.device_group = "world-device-group"


class _Parallel:
    def __init__(self, widths: dict) -> None:
        self.__dict__.update(widths)
        self.world_group = _Recorded(-1, {"group_name": "world"})
        self.published: dict | None = None

    def override_permanently(self, **groups) -> None:
        self.published = groups


class _Env:
    def __init__(self, value) -> None:
        self.value = value

    def get(self):
        return self.value


class _Platform:
    capabilities = types.SimpleNamespace(supports_pynccl=True)

    @staticmethod
    def is_out_of_tree() -> bool:
        return False


class Runner:
    """Compiled SGLang functions plus the stubbed module they run in."""

    def __init__(self, parallel_state: bytes, runtime_context: bytes) -> None:
        ps_tree = ast.parse(parallel_state)
        defs = _function_defs(ps_tree, {"initialize_model_parallel", "init_model_parallel_group"})
        self.switches = _module_constants(ps_tree, MODULE_SWITCHES)
        self.tracked = set(GROUP_GLOBALS) | set(OFF_GLOBALS)
        declared = {name for node in ast.walk(defs["initialize_model_parallel"]) if isinstance(node, ast.Global) for name in node.names}
        if declared != self.tracked:
            raise SystemExit(f"initialize_model_parallel declares globals {sorted(declared)}, expected {sorted(self.tracked)}")
        wrapper = _WrapGroupStores(self.tracked)
        imp = wrapper.visit(defs["initialize_model_parallel"])
        if wrapper.wrapped < len(self.tracked):
            raise SystemExit(f"only {wrapper.wrapped} group assignments found; the function changed shape")
        ps_module = ast.fix_missing_locations(ast.Module(body=[defs["init_model_parallel_group"], imp], type_ignores=[]))
        self.ps_code = compile(ps_module, PARALLEL_STATE, "exec")

        rc_tree = ast.parse(runtime_context)
        rc_defs = _function_defs(rc_tree, {"derive_attn_tp_size", "derive_parallel_widths"})
        rc_module = ast.Module(body=[rc_defs["derive_attn_tp_size"], rc_defs["derive_parallel_widths"]], type_ignores=[])
        self.rc_code = compile(rc_module, RUNTIME_CONTEXT, "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)

    def run(self, tp: int, ep: int, pp: int, moe_dp: int, attn_dp: int, attn_cp: int) -> dict:
        world_size = tp * pp
        calls: list[dict] = []
        stores: list[dict] = []
        parallel = _Parallel(
            dict(
                tp_size=tp,
                moe_ep_size=ep,
                pp_size=pp,
                attn_dp_size=attn_dp,
                attn_cp_size=attn_cp,
                moe_dp_size=moe_dp,
                attn_dcp_size=1,
                shared_experts_tp_size=None,
            )
        )

        def group_coordinator(**kwargs):
            record = {
                "group_name": kwargs["group_name"],
                "group_ranks": [list(ranks) for ranks in kwargs["group_ranks"]],
                "use_pynccl": kwargs["use_pynccl"],
                "use_custom_allreduce": kwargs["use_custom_allreduce"],
            }
            for key in ("use_pynccl", "use_custom_allreduce"):
                if not isinstance(record[key], bool):
                    raise AssertionError(f"{record['group_name']}: {key} = {record[key]!r} is not a bool")
            calls.append(record)
            return _Recorded(len(calls) - 1, kwargs)

        def store(target: str, value, source: str | None):
            if source is not None:
                stores.append({"global": target, "alias_of": source, "call": getattr(value, "call_index", None)})
            else:
                if not isinstance(value, _Recorded) or value.call_index != len(calls) - 1:
                    raise AssertionError(f"{target} assigned from something other than the latest call")
                stores.append({"global": target, "alias_of": None, "call": value.call_index})
            return value

        sampler = types.ModuleType("sglang.srt.layers.sampler")
        sampler.SYNC_TOKEN_IDS_ACROSS_TP = False
        real_import = builtins.__import__

        def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
            if name == "sglang.srt.layers.sampler":
                return sampler
            if name.startswith("sglang"):
                raise ImportError(f"unexpected import of {name} from SGLang code")
            return real_import(name, globals, locals, fromlist, level)

        fake_builtins = dict(vars(builtins), __import__=guarded_import)
        rc_globals: dict = {"__builtins__": fake_builtins, "__name__": "sglang.srt.runtime_context"}
        exec(self.rc_code, rc_globals)

        distributed = types.SimpleNamespace(
            is_initialized=lambda: True,
            get_world_size=lambda: world_size,
            get_backend=lambda group: "nccl",
        )
        namespace: dict = {
            "__builtins__": fake_builtins,
            "__name__": "sglang.srt.distributed.parallel_state",
            "__memprobe_store__": store,
            "List": typing.List,
            "Optional": typing.Optional,
            "GroupCoordinator": group_coordinator,
            "platforms": types.SimpleNamespace(current_platform=_Platform()),
            "_is_npu": False,
            "_is_xpu": False,
            "is_hip": lambda: False,
            "is_cuda": lambda: True,
            "envs": types.SimpleNamespace(SGLANG_USE_MESSAGE_QUEUE_BROADCASTER=_Env(True)),
            "torch": types.SimpleNamespace(distributed=distributed),
            "get_parallel": lambda: parallel,
            "get_world_group": lambda: parallel.world_group,
            "derive_parallel_widths": rc_globals["derive_parallel_widths"],
            "logger": types.SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None),
            **self.switches,
            **{name: None for name in self.tracked},
        }
        exec(self.ps_code, namespace)
        namespace["initialize_model_parallel"]()

        for name in OFF_GLOBALS:
            if namespace[name] is not None:
                raise AssertionError(f"{name} was built; it should be off in every recorded layout")
        # Cross-check the recorded stores with the final object identity of the globals.
        groups: dict[str, dict] = {}
        for entry in stores:
            target = entry["global"]
            if target not in GROUP_GLOBALS:
                continue
            obj = namespace[target]
            alias = entry["alias_of"]
            if alias is not None:
                if obj is not namespace[alias]:
                    raise AssertionError(f"{target} is not the same object as {alias}")
                if not isinstance(obj, _Recorded):
                    raise AssertionError(f"{target} aliases {alias}, which holds no coordinator")
            groups[GROUP_GLOBALS[target]] = {
                "alias_of": GROUP_GLOBALS[alias] if alias is not None else None,
                "call": obj.call_index,
            }
        # Identity: two globals hold the same object iff they name the same call.
        for a, b in itertools.combinations(GROUP_GLOBALS, 2):
            same = namespace[a] is namespace[b]
            if same != (groups[GROUP_GLOBALS[a]]["call"] == groups[GROUP_GLOBALS[b]]["call"]):
                raise AssertionError(f"identity of {a} and {b} disagrees with the recorded calls")
        if set(groups) != set(GROUP_GLOBALS.values()):
            raise AssertionError(f"groups assigned: {sorted(groups)}")
        published = set(parallel.published or {})
        expected = {f"{GROUP_GLOBALS[g].replace('attention_tp', 'attn_tp')}_group" for g in GROUP_GLOBALS} - {"self_pp_group"}
        if published != expected:
            raise AssertionError(f"published {sorted(published)}, expected {sorted(expected)}")
        return {
            # group -> the global SGLang assigned it from (``_MOE_DP = _ATTN_CP`` -> "attn_cp")
            "alias_map": {name: info["alias_of"] for name, info in groups.items() if info["alias_of"] is not None},
            "assignment_order": [GROUP_GLOBALS[e["global"]] for e in stores if e["global"] in GROUP_GLOBALS],
            "calls": calls,
            # group -> index into calls of the object the global finally holds (identity)
            "object_of": {name: info["call"] for name, info in groups.items()},
            "world_size": world_size,
        }


# --------------------------------------------------------------------------- layouts


def _divisor_pairs(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(1, n + 1) for b in range(1, n + 1) if n % (a * b) == 0]


def layout_id(layout: dict) -> str:
    return "tp{tp}-ep{ep}-pp{pp}-moedp{moe_dp}-attndp{attn_dp}-attncp{attn_cp}".format(**layout)


def _keep_sampled(layout: dict) -> bool:
    """Deterministic ~1-in-4 sample for the big shapes, plus every 'edge' shape."""
    tp = layout["tp"]
    edge = (
        layout["ep"] in (1, tp)
        and layout["moe_dp"] in (1, tp)
        and layout["attn_dp"] in (1, tp)
        and layout["attn_cp"] in (1, tp)
    )
    digest = int.from_bytes(hashlib.sha256(layout_id(layout).encode()).digest()[:8], "big")
    return edge or digest % 4 == 0


def enumerate_layouts() -> list[dict]:
    """All tp<=8 shapes at pp 1 and 2, all tp=16 shapes at pp 1; a sample of the rest."""
    layouts = []
    for tp, pp in itertools.product(TP_SIZES, PP_SIZES):
        for (ep, moe_dp), (attn_dp, attn_cp) in itertools.product(_divisor_pairs(tp), _divisor_pairs(tp)):
            layout = dict(tp=tp, ep=ep, pp=pp, moe_dp=moe_dp, attn_dp=attn_dp, attn_cp=attn_cp)
            complete = (tp <= 8 and pp <= 2) or (tp == 16 and pp == 1)
            if complete or _keep_sampled(layout):
                layouts.append(layout)
    return layouts


# --------------------------------------------------------------------------- output


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def render(header: dict, entries: list[dict]) -> str:
    """Sorted-key JSON with one layout per line (valid JSON, small diffs)."""
    document = dict(header, layouts=None)
    lines = ["{"]
    keys = sorted(document)
    for i, key in enumerate(keys):
        comma = "," if i < len(keys) - 1 else ""
        if key == "layouts":
            lines.append(f"{json.dumps(key)}:[")
            lines.extend(_dumps(entry) + ("," if j < len(entries) - 1 else "") for j, entry in enumerate(entries))
            lines.append("]" + comma)
        else:
            lines.append(f"{json.dumps(key)}:{_dumps(document[key])}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sglang", type=Path, help="unpacked sglang wheel (folder holding sglang/) or the .whl file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output JSON (default {DEFAULT_OUT})")
    parser.add_argument("--sglang-version", default=None, help="version to record when the wheel metadata is absent")
    parser.add_argument("--expect-version", default="0.5.23", help='refuse other versions ("" to allow any)')
    args = parser.parse_args(argv)

    sources = Sources(args.sglang)
    parallel_state = sources.read(PARALLEL_STATE)
    runtime_context = sources.read(RUNTIME_CONTEXT)
    if parallel_state is None or runtime_context is None:
        raise SystemExit(f"{args.sglang}: needs {PARALLEL_STATE} and {RUNTIME_CONTEXT}")
    version = sources.version() or args.sglang_version
    if version is None:
        raise SystemExit("cannot read the SGLang version from the wheel metadata; pass --sglang-version")
    if args.sglang_version and args.sglang_version != version:
        raise SystemExit(f"--sglang-version {args.sglang_version} disagrees with the wheel metadata ({version})")
    if args.expect_version and version != args.expect_version:
        raise SystemExit(f"SGLang {version} found, expected {args.expect_version} (pass --expect-version '' to override)")

    runner = Runner(parallel_state, runtime_context)
    entries = []
    for layout in enumerate_layouts():
        entry = runner.run(**layout)
        entry["id"] = layout_id(layout)
        entry["layout"] = layout
        entries.append(entry)

    header = {
        "format": 1,
        "generator": "tools/sglang_layouts.py",
        "sglang_version": version,
        "parallel_state_path": PARALLEL_STATE,
        "parallel_state_sha256": hashlib.sha256(parallel_state).hexdigest(),
        "runtime_context_sha256": hashlib.sha256(runtime_context).hexdigest(),
        "assumptions": {
            "enable_symm_mem": False,
            "duplicate_tp_group": False,
            "attn_dcp_size": 1,
            "shared_experts_tp_size": None,
            "platform": "cuda (in-tree, _is_npu=False, _is_xpu=False)",
            "backend": "nccl",
            "SYNC_TOKEN_IDS_ACROSS_TP": False,
            "SGLANG_USE_MESSAGE_QUEUE_BROADCASTER": True,
            "module_switches": runner.switches,
        },
        "layout_count": len(entries),
    }
    text = render(header, entries)
    json.loads(text)  # it must stay valid JSON
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: {len(entries)} layouts, {len(text.encode())} bytes, SGLang {version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Typer options the commands share, each declared once with its default read from :mod:`memprobe.api`'s
options (and :class:`memprobe.launch.options.LaunchOptions`), never the reverse.

Environment variables, one rule: an option that means the same in every command that has it (those
defined here: layout widths and --layout, --stack, --device, --warmup, --env-preset, --env, --engine, --out-dir,
--run-id, --timeout, the torchrun options, --allow-busy-gpu, --per-rank, --all-ranks, --json-schema, --quiet,
--verbose) reads
``MEMPROBE_<OPTION>``; every other option, a command's own files and switches, reads
``MEMPROBE_<COMMAND>_<OPTION>`` (``MEMPROBE_COMPARE_JSON``, ``MEMPROBE_PLAN_JSON``,
``MEMPROBE_GATE_BASELINE``, ``MEMPROBE_BASELINE_UPDATE_OUT``), so setting one never changes another
command's meaning."""

from __future__ import annotations

import functools
import inspect
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import typer

from memprobe.api import GateOptions, RunOptions, Widths, Workers
from memprobe.launch.options import CPU_RANKS_PER_NODE, LaunchOptions

ENV = "MEMPROBE_"


def option(default: Any, *names: str, env: str, help: str, **settings: Any) -> Any:
    """A Typer option reading ``MEMPROBE_<env>``: the one way every command declares its options."""
    return typer.Option(default, *names, envvar=ENV + env, help=help, **settings)


def layout_help(name: str) -> str:
    """The help of a layout option: what each engine memprobe ships declares for the field (its ``flag_field``),
    SGLang's first, each once."""
    from memprobe.engines import builtin_engines

    helps: list[str] = []
    for engine in builtin_engines():
        layout = engine.layout_type
        if name in layout.field_names() and layout.help_of(name) not in helps:
            helps.append(layout.help_of(name))
    return " ".join(helps)


def _layout_option(name: str) -> Any:
    """The option of one layout field: its flag (and a switch's off form) and help from the engines' layouts, its
    default from :class:`Widths`."""
    from memprobe.engines import builtin_engines

    default = next(item.default for item in fields(Widths) if item.name == name)
    spellings = next(engine.layout_type.spellings(name) for engine in builtin_engines()
                     if name in engine.layout_type.field_names())
    return option(default, "/".join(spellings), env=name.upper(), help=layout_help(name),
                  show_default=default != "")  # "": the engine's own default, which the help names


TP = option(..., "--tp", env="TP", help=layout_help("tp"), show_default=False)
EP = option(RunOptions.ep, "--ep", env="EP", help=layout_help("ep"))
LAYOUT = option(list(Widths.layout), "--layout", env="LAYOUT", metavar="NAME=VALUE",
                help="A field of the engine's layout that no flag here declares (a plug-in engine's own width), e.g. "
                     "--layout rings=2; repeatable; checked against the engine's layout.")
#: Every layout option but --tp and --ep (each command's own): the fields of :class:`Widths`, in their order.
LAYOUT_OPTIONS: dict[str, Any] = {item.name: LAYOUT if item.name == "layout" else _layout_option(item.name)
                                  for item in fields(Widths)}
_LAYOUT_TYPES = {item.name: list[str] if item.name == "layout" else type(item.default) for item in fields(Widths)}
#: What a command declared with :func:`layout_options` receives as ``widths`` when called without the options.
DEFAULT_WIDTHS: Mapping[str, Any] = MappingProxyType({item.name: item.default for item in fields(Widths)})


def layout_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with :data:`LAYOUT_OPTIONS` as its options in place of its parameter ``widths``, which receives
    them as one mapping, as the API functions take them (``--layout``'s as a tuple): every command that takes a
    layout declares them alike, from this one place."""
    signature = inspect.signature(command, eval_str=True)
    parameters = list(signature.parameters.values())
    at = [parameter.name for parameter in parameters].index("widths")
    added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=declared,
                               annotation=_LAYOUT_TYPES[name]) for name, declared in LAYOUT_OPTIONS.items()]

    @functools.wraps(command)
    def with_layout(**given: Any) -> Any:
        widths = {name: given.pop(name) for name in LAYOUT_OPTIONS}
        widths["layout"] = tuple(widths["layout"])
        return command(**given, widths=widths)

    with_layout.__signature__ = signature.replace(  # type: ignore[attr-defined]  # what Typer reads
        parameters=parameters[:at] + added + parameters[at + 1:])
    with_layout.__annotations__ = {**{name: value for name, value in command.__annotations__.items() if name != "widths"},
                                   **_LAYOUT_TYPES}
    return with_layout


def engines_stacks(pairs: bool = False) -> str:
    """Each shipped engine's stacks as ``--stack``'s help names them (``pairs``: the pair ``--stacks`` defaults to)."""
    from memprobe.engines import builtin_engines

    texts = []
    for engine in builtin_engines():
        name = engine.name_for("reference") or engine.name
        shown = next((alias for alias, canonical in engine.aliases.items() if canonical == name), name)
        texts.append(f"--engine {shown}: {','.join(engine.stack_pair or (engine.default_stack,))}" if pairs else
                     f"--engine {shown} (default {engine.default_stack}): {engine.builtin_stacks_text}.")
    return ("; " if pairs else " ").join(texts)


STACK = option(RunOptions.stack, "--stack", env="STACK", show_default=False,
               help=f"Communicator stack; left out, the engine's default. {engines_stacks()} Or a TOML file (see "
                    "configs/). SGLang's full is before SGLang PR #22515, lean SGLang 0.5.23's (add ':v1' for the v1 "
                    "custom all-reduce buffers); vLLM's vllm is 0.33.0's (vllm:0.11, vllm:0.10 those lines'), "
                    "shared-ep the EP group reusing TP's PyNccl. The installed engines (--engine sglang, vllm) also "
                    "take installed: the engine's own flags (vllm takes only that).")
STACKS = f"Comma-separated stacks for the compared layout (left out: the engine's pair, {engines_stacks(pairs=True)}); " \
         "each engine's stacks: memprobe plan --help, under --stack."
DEVICE = option(LaunchOptions.device, "--device", env="DEVICE",
                help="cuda: one rank per GPU, NVML readings. cpu: the same pipeline on gloo with host-RSS readings "
                     f"(no GPU needed; pynccl and custom all-reduce are skipped; at most {CPU_RANKS_PER_NODE} ranks per node).")
OUT_DIR = option(LaunchOptions.out_dir, "--out-dir", env="OUT_DIR", help="Folder that receives one sub-folder per run.")
RUN_ID = option(LaunchOptions.run_id, "--run-id", env="RUN_ID", help="Name of the run folder (default: UTC time + layout).")
TIMEOUT = option(LaunchOptions.timeout_s, "--timeout", env="TIMEOUT",
                 help="The longest any rank may go without a sign of life: an event in its stream, such as a new reading "
                      "(counted from launch, or from its scenario's turn "
                      "when scenarios run in turn, so a rank that never starts is caught too); then that scenario's "
                      "processes are stopped and the silent rank is named.")
NNODES = option(LaunchOptions.nnodes, "--nnodes", env="NNODES", help="Nodes (passed to torchrun).")
NODE_RANK = option(LaunchOptions.node_rank, "--node-rank", env="NODE_RANK", help="This node's rank (passed to torchrun).")
MASTER_ADDR = option(LaunchOptions.master_addr, "--master-addr", env="MASTER_ADDR", help="Rendezvous host (passed to torchrun).")
MASTER_PORT = option(LaunchOptions.master_port, "--master-port", env="MASTER_PORT",
                     help="Rendezvous port (default: a free port; needed with --nnodes > 1 unless --rdzv-endpoint is given).")
RDZV_BACKEND = option(LaunchOptions.rdzv_backend, "--rdzv-backend", env="RDZV_BACKEND",
                      help="torchrun's dynamic rendezvous backend (with --rdzv-endpoint): c10d or static.")
RDZV_ENDPOINT = option(LaunchOptions.rdzv_endpoint, "--rdzv-endpoint", env="RDZV_ENDPOINT",
                       help="HOST:PORT of torchrun's dynamic rendezvous (Slurm, Kubernetes); replaces --master-addr/--master-port "
                            "and --node-rank decides only which ranks' streams this node keeps.")
RDZV_ID = option(LaunchOptions.rdzv_id, "--rdzv-id", env="RDZV_ID", help="Rendezvous id shared by all nodes (default: the scenario's name).")
TIMINGS = option(False, "--timings", env="TIMINGS",
                 help="Also show where the time went: torchrun start, import, CUDA context, each step, gather, teardown, GPU release.")
ALLOW_BUSY = option(LaunchOptions.allow_busy_gpu, "--allow-busy-gpu", env="ALLOW_BUSY_GPU",
                    help="Measure even when other processes use the GPUs and only device-level figures are available.")


def _verbosity_option(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> bool:
    """Sets the level while the options are parsed, so that it holds before the command does anything."""
    from memprobe import verbosity

    given = ctx.meta.setdefault("memprobe.verbosity", set())
    if value:
        given.add(param.name)
    verbosity.apply("quiet" in given, "verbose" in given)
    return value


QUIET = option(False, "--quiet", "-q", env="QUIET", callback=_verbosity_option,
               help="No progress and no confirmations of files written, on stderr (results, notes, warnings and errors are still shown).")
VERBOSE = option(False, "--verbose", "-v", env="VERBOSE", callback=_verbosity_option,
                 help="Also every progress step and what the command reads, measures and writes (on stderr).")
ENV_OPT = option(list(Workers.env), "--env", env="ENV", help="KEY=VALUE for the workers' environment (repeatable), e.g. NCCL_BUFFSIZE=1048576.")
ENV_PRESET = option(Workers.env_preset, "--env-preset", env="ENV_PRESET", show_default=False,
                    help="sglang: SGLang's engine settings (NCCL_CUMEM_ENABLE=0, NCCL_NVLS_ENABLE=0, "
                         "TORCH_NCCL_AVOID_RECORD_STREAMS=1, CUDA_DEVICE_MAX_CONNECTIONS=8) unless already set; vllm: "
                         "vLLM's (it sets no NCCL variable: cuMem on, lazy connection); none: NCCL defaults. Left out: "
                         "the engine's own (sglang-ref: sglang, vllm-ref: vllm).")
WARMUP = option(Workers.warmup, "--warmup", env="WARMUP",
                help="First collective on each group after init: none, tiny (1-element all-reduce) or sweep (4 B..64 MiB all-reduce + all-gather).")
NCCL_LOG = option(LaunchOptions.nccl_log, "--nccl-log", env="NCCL_LOG",
                  help="Record NCCL's own account of every communicator: NCCL_DEBUG=INFO, NCCL_DEBUG_SUBSYS=ALLOC,INIT "
                       "into <run>/nccl/ (one log per process); shown beside each step's bytes (see report --nccl).")
SPLIT = option(False, "--split", env="SPLIT",
               help="Also show every step's bytes split into torch's caching allocator (torch-reserved change) and the rest.")
PER_RANK = option(False, "--per-rank", env="PER_RANK",
                  help="Show every rank, not the worst rank and the spread; a comparison's table puts ranks that read "
                       "alike in one row with their rank list (--all-ranks: a row each).")
ALL_RANKS = option(False, "--all-ranks", env="ALL_RANKS",
                   help="With --per-rank: one row for every rank, even where ranks read alike.")
JSON_SCHEMA = option(2, "--json-schema", env="JSON_SCHEMA", metavar="1|2",
                     help="Schema of the --json export: 2 stores each rank class once (compact); 1 every rank in "
                          "full, as before (kept for one release).")

ESTIMATE = option(GateOptions.estimate, "--estimate", env="ESTIMATE",
                  help="Estimate (memprobe estimate: NCCL's rules and a calibration, no GPU) instead of measuring. "
                       "Only an estimated baseline is judged against an estimate, never a measured one (exit 4).")
CALIBRATION = option(GateOptions.calibration, "--calibration", env="CALIBRATION",
                     help="With --estimate: a calibration file from memprobe calibrate (default: the packaged one "
                          "for the baseline's GPU model).")
NCCL = option(GateOptions.nccl, "--nccl", env="NCCL", metavar="VERSION",
              help="With --estimate: the NCCL whose rules apply (2.27.3 to 2.30.7; default: the installed torch's NCCL, "
                   "read from package metadata; without one, the NCCL the engine's release pins (vLLM 0.33.0: 2.30.7), "
                   "else the calibration's).")
NETWORK = option(GateOptions.network, "--network", env="NETWORK",
                 help="With --estimate, between nodes: ib-gdr (InfiniBand with GPUDirect RDMA), ib (no GPUDirect: NET "
                      "buffers in host memory) or socket (NCCL's socket transport, one interface per node).")
NIC_GBPS = option(GateOptions.nic_gbps, "--nic-gbps", env="NIC_GBPS",
                  help="With --estimate: NIC speed in Gb/s (default: 400 for ib-gdr and ib, 10 for socket).")
GATE_TIMEOUT = option(LaunchOptions.timeout_s, "--timeout", env="TIMEOUT",  # the gate's and baseline update's wording
                      help="The longest any rank may go without a new reading (counted from launch, or from its scenario's turn).")


def launch_options(device: str, out_dir: Path, timeout: float, quiet: bool = False, nnodes: int = LaunchOptions.nnodes,
                   node_rank: int = LaunchOptions.node_rank, master_addr: str = LaunchOptions.master_addr,
                   master_port: Optional[int] = LaunchOptions.master_port, allow_busy_gpu: bool = LaunchOptions.allow_busy_gpu,
                   run_id: Optional[str] = LaunchOptions.run_id, nccl_log: bool = LaunchOptions.nccl_log,
                   rdzv_backend: str = LaunchOptions.rdzv_backend, rdzv_endpoint: Optional[str] = LaunchOptions.rdzv_endpoint,
                   rdzv_id: Optional[str] = LaunchOptions.rdzv_id) -> LaunchOptions:
    """The launch options from a command's; validated (UsageError). ``--env`` is not here: it belongs to each
    scenario's identity."""
    return LaunchOptions(device=device, out_dir=out_dir, timeout_s=timeout, nnodes=nnodes, node_rank=node_rank,
                         master_addr=master_addr, master_port=master_port, allow_busy_gpu=allow_busy_gpu,
                         progress=not quiet, run_id=run_id, nccl_log=nccl_log,
                         rdzv_backend=rdzv_backend, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id)

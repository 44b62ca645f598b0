"""The options of every API function: frozen dataclasses whose field defaults are the command line's (the CLI reads
them from here), each checked against its annotations when made (:mod:`memprobe.fields`): a path may be a ``str`` or
an ``os.PathLike``, and a value of the wrong type is an :class:`~memprobe.errors.OptionTypeError` (exit 2)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from memprobe.errors import OptionTypeError
from memprobe.fields import PathText, check_fields
from memprobe.launch.options import LaunchOptions

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from memprobe.model.comparison import Comparison

__all__ = ["BaselineOptions", "CalibrateOptions", "CompareOptions", "EstimateOptions", "GateOptions", "LaunchOptions",
           "PlanOptions", "RunOptions", "Widths", "Workers", "options_of"]

Options = TypeVar("Options", bound="DataclassInstance")


def options_of(kind: type[Options], given: Optional[Options], overrides: dict[str, Any]) -> Options:
    """``given`` with ``overrides`` applied, or the options made from the overrides alone."""
    if given is not None and not isinstance(given, kind):
        raise OptionTypeError(f"the options value must be of type {kind.__name__}, got {type(given).__name__}")
    unknown = sorted(set(overrides) - {f.name for f in fields(kind)})
    if unknown:
        raise OptionTypeError(f"{kind.__name__} has no field(s) {', '.join(unknown)}")
    return replace(given, **overrides) if given is not None else kind(**overrides)


class Checked:
    """Every field checked against its annotation when the options are made (and by ``replace``)."""

    def __post_init__(self) -> None:
        check_fields(self)


# ------------------------------------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class Widths(Checked):
    """The layout's widths besides TP and EP (SGLang's --pp, --moe-dp-size, --attn-dp-size, --attn-cp-size)."""

    pp: int = 1
    moe_dp: int = 1
    attn_dp: int = 1
    attn_cp: int = 1
    # vLLM's (--engine vllm-ref): at their defaults they are not passed to the engine
    dp: int = 1
    dcp: int = 1
    pcp: int = 1
    enable_expert_parallel: bool = False
    enable_eplb: bool = False
    moe: bool = False
    disable_custom_all_reduce: bool = False
    all2all_backend: str = ""  # "": vLLM's default
    # NAME=VALUE for a field of the engine's layout that none of the above declares (a plug-in engine's own width)
    layout: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Workers(Checked):
    """What the workers do besides building groups: the first collective, the environment preset, ``KEY=VALUE``s."""

    warmup: str = "tiny"
    env_preset: Optional[str] = None  # None: the engine's own preset (sglang-ref: sglang, vllm-ref: vllm)
    env: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PlanOptions(Widths):
    tp: int
    ep: int = 1
    stack: Optional[str] = None  # None: the engine's default stack (sglang-ref: lean, vllm-ref: vllm)
    engine: str = "memprobe"  # any name memprobe.engines knows: sglang-ref (memprobe), sglang, ...


@dataclass(frozen=True, kw_only=True)
class RunOptions(Widths, Workers):
    tp: int
    ep: int = 1
    stack: Optional[str] = None  # None: the engine's default stack
    engine: str = "memprobe"
    sglang: PathText = ""  # with engine "sglang": a site folder holding it (default: the importable one)
    vllm: PathText = ""  # with engine "vllm": a site folder holding it (default: the importable one)
    launch: LaunchOptions = LaunchOptions()


@dataclass(frozen=True, kw_only=True)
class CompareOptions(Widths, Workers):
    tp: Optional[int] = None  # default: every visible GPU (4 with device cpu)
    ep: Optional[int] = None  # default: tp / 2
    stacks: Optional[str] = None  # None: the engine's pair (sglang-ref: full,lean; vllm-ref: vllm,shared-ep)
    baseline_tp: Optional[int] = None
    scenarios: Optional[Path] = None  # a scenario TOML file instead of the headline layouts
    engine: str = "memprobe"  # memprobe, sglang, or memprobe,sglang
    sglang: tuple[str, ...] = ()  # LABEL=SITE: the MoE layout on a real SGLang installation
    vllm: tuple[str, ...] = ()  # LABEL=SITE: the compared layout on a real vLLM installation
    jobs: int = 0  # scenarios at once; 0: all on GPUs, one after another on cpu
    launch: LaunchOptions = LaunchOptions()


@dataclass(frozen=True, kw_only=True)
class EstimateOptions(Widths, Workers):
    tp: Optional[int] = None
    ep: Optional[int] = None
    stacks: Optional[str] = None  # None: the engine's pair, as CompareOptions
    baseline_tp: Optional[int] = None
    scenarios: Optional[Path] = None
    gpus_per_node: Optional[int] = None
    nnodes: Optional[int] = None
    gpu: Optional[str] = None  # default: the packaged calibration's GPU model
    calibration: Optional[Path] = None
    engine: str = "memprobe"
    sglang: Optional[Path] = None
    vllm: Optional[Path] = None  # with engine "vllm": a site folder holding it
    progress: bool = True  # of the --device cpu run that learns real SGLang's flags (engine sglang)
    timeout_s: float = LaunchOptions.timeout_s  # of that run: the longest a rank may go without a sign of life
    nccl: Optional[str] = None  # whose rules (default: the installed torch's NCCL, else the calibration's)
    network: str = "ib-gdr"  # between nodes: ib-gdr, ib or socket
    nic_gbps: Optional[float] = None  # NIC speed (default: 400 for ib-gdr/ib, 10 for socket)


@dataclass(frozen=True, kw_only=True)
class GateOptions(Checked):
    baseline: Path
    results: "Optional[Path | Comparison]" = None  # judge these instead of measuring (or estimating)
    scenarios: tuple[str, ...] = ()  # only these baseline scenarios
    relative: Optional[str] = None  # e.g. "5%": for every metric, over the baseline file's
    absolute: Optional[str] = None  # e.g. "64MiB"
    thresholds: tuple[str, ...] = ()  # "scenario=NAME,metric=GLOB,relative=P,absolute=SIZE,max=SIZE,ignore=true"
    allow_env_mismatch: bool = False
    sglang: PathText = ""  # a site folder holding SGLang
    vllm: PathText = ""  # a site folder holding vLLM
    estimate: bool = False
    calibration: Optional[Path] = None
    nccl: Optional[str] = None  # with estimate: as EstimateOptions
    network: str = "ib-gdr"
    nic_gbps: Optional[float] = None
    launch: LaunchOptions = LaunchOptions()

    def __post_init__(self) -> None:
        from memprobe.model.comparison import Comparison  # the results may be one: imported when a gate is made

        check_fields(self, {"Comparison": Comparison})


@dataclass(frozen=True, kw_only=True)
class BaselineOptions(Checked):
    out: Path
    scenarios_file: Optional[Path] = None
    from_dir: Optional[Path] = None
    scenarios: tuple[str, ...] = ()
    estimate: bool = False
    calibration: Optional[Path] = None
    gpus_per_node: Optional[int] = None
    sglang: PathText = ""  # a site folder holding SGLang
    vllm: PathText = ""  # a site folder holding vLLM
    nccl: Optional[str] = None  # with estimate: as EstimateOptions
    network: str = "ib-gdr"
    nic_gbps: Optional[float] = None
    launch: LaunchOptions = LaunchOptions()


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions(Checked):
    out: Path  # the calibration file to write (.json)
    nvlinks: Optional[int] = None  # NVLinks per GPU of the node estimated for (default: what NVML reports here)
    gpu_index: int = 0  # which visible GPU to measure (CUDA order)

"""Calibration files: the per-process constants of one GPU model and software stack, measured on one GPU.

``memprobe calibrate`` writes one; ``memprobe estimate`` reads one. The constants are what no NCCL
rule sizes: the CUDA context, and the once-per-process cost of a process's first NCCL communicator of
several ranks (NCCL's device code, its stack reservation and proxy; the committed NCCL logs name none
of it). Both are measured per ``NCCL_CUMEM_ENABLE`` setting. The file also keeps what the
calibration saw of a one-rank communicator, so the backtest can set NCCL's rules against it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memprobe.errors import DamagedInput, UsageError

if TYPE_CHECKING:  # typing.TypeIs is Python 3.13's; the checker reads it from typing_extensions
    from typing_extensions import TypeIs

CALIBRATION_SCHEMA = 1
KIND = "memprobe-calibration"
PACKAGED = Path(__file__).with_name("calibrations")


@dataclass(frozen=True)
class CalibrationPoint:
    """What one ``NCCL_CUMEM_ENABLE`` setting measured (bytes, NVML per-process figures)."""

    cumem: bool
    cuda_context_bytes: int  # set_device + a first tensor (its 2 MiB torch segment included)
    first_communicator_bytes: int  # a process's first multi-rank communicator minus its second one
    one_rank_communicator_bytes: int  # a second one-rank communicator, warmed, without its torch segment
    two_rank_communicator_bytes: int  # the second two-process communicator the first one is measured against


@dataclass(frozen=True)
class Calibration:
    gpu_model: str
    compute_capability: int  # 90 for sm_90
    sm_count: int
    nvlinks_per_gpu: int
    nvlinks_source: str
    driver: str
    cuda: str
    torch: str
    nccl: str
    points: tuple[CalibrationPoint, ...]
    created_utc: str = ""
    host: str = ""
    method: str = ""
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def point(self, cumem: bool) -> CalibrationPoint:
        for point in self.points:
            if point.cumem == cumem:
                return point
        raise UsageError(f"calibration {self.path or self.gpu_model} has no point for NCCL_CUMEM_ENABLE={int(cumem)}; "
                         "run memprobe calibrate again")

    def basis(self) -> dict[str, Any]:
        """What an estimate made from this calibration records about it."""
        return {"calibration": self.path, "gpu_model": self.gpu_model, "driver": self.driver, "cuda": self.cuda,
                "torch": self.torch, "nccl": self.nccl, "nvlinks_per_gpu": self.nvlinks_per_gpu,
                "created_utc": self.created_utc}

    def to_json(self) -> str:
        document = {"schema_version": CALIBRATION_SCHEMA, "kind": KIND, **asdict(self)}
        document.pop("path")
        return json.dumps(document, indent=2, sort_keys=True) + "\n"


def load_calibration(path: str | Path) -> Calibration:
    """A calibration file, every field checked for its type and range: a damaged one is one line naming the file and
    the field (:class:`DamagedInput`, exit 2), never a traceback nor an estimate made from nonsense."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--calibration {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        why = "nested too deeply" if isinstance(error, RecursionError) else error
        raise DamagedInput(f"--calibration {path}: not a calibration file ({why})") from None
    if not isinstance(document, dict) or document.get("kind") != KIND or document.get("schema_version") != CALIBRATION_SCHEMA:
        raise DamagedInput(f"--calibration {path}: not a memprobe calibration file (schema {CALIBRATION_SCHEMA})")
    document = {key: value for key, value in document.items() if key not in ("kind", "schema_version")}
    _check_fields(document, path)
    try:
        points = tuple(CalibrationPoint(**point) for point in document.pop("points"))
        calibration = Calibration(points=points, path=str(path), **document)
    except (TypeError, KeyError) as error:
        raise DamagedInput(f"--calibration {path}: missing or unknown field ({error})") from None
    return calibration


MAX_BYTES = 2**40  # 1 TiB: more than any GPU holds
# field: (lowest, highest) for the whole numbers; the text fields are one printable line each
_COUNTS = {"compute_capability": (10, 199), "sm_count": (1, 1024), "nvlinks_per_gpu": (1, 64)}
_TEXTS = ("gpu_model", "nvlinks_source", "driver", "cuda", "torch", "nccl", "created_utc", "host", "method")


def _check_fields(document: dict[str, Any], path: Path) -> None:
    def fail(message: str) -> DamagedInput:
        return DamagedInput(f"--calibration {path}: {message}")

    for name, (low, high) in _COUNTS.items():
        value = document.get(name)
        if not _is_int(value) or not low <= value <= high:
            raise fail(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    for name in _TEXTS:
        value = document.get(name, "")
        if not isinstance(value, str) or not value.isprintable() or len(value) > 1000:
            raise fail(f"{name} must be one line of printable text, got {value!r:.80}")
    if not document.get("gpu_model"):
        raise fail("gpu_model is empty")
    if not isinstance(document.get("extra", {}), dict):
        raise fail("extra must be an object")
    points = document.get("points")
    if not isinstance(points, list) or not 1 <= len(points) <= 2 or not all(isinstance(p, dict) for p in points):
        raise fail("points must be a list of one or two objects (one per NCCL_CUMEM_ENABLE setting)")
    for index, point in enumerate(points):
        if not isinstance(point.get("cumem"), bool):
            raise fail(f"points[{index}].cumem must be true or false, got {point.get('cumem')!r}")
        for name in (f.name for f in fields(CalibrationPoint) if f.name != "cumem"):
            value = point.get(name)
            if not _is_int(value) or not 0 <= value <= MAX_BYTES:
                raise fail(f"points[{index}].{name} must be a whole number of bytes from 0 to 2^40, got {value!r}")
    if len({point["cumem"] for point in points}) < len(points):
        raise fail("points holds NCCL_CUMEM_ENABLE=" + str(int(points[0]["cumem"])) + " twice")


def _is_int(value: Any) -> TypeIs[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def packaged_calibrations() -> list[Path]:
    return sorted(PACKAGED.glob("*.json"))


def find_calibration(gpu: str | None, path: str | Path | None) -> Calibration:
    """The calibration asked for: a file, or the packaged one of ``gpu`` (default: the only packaged one)."""
    if path is not None:
        calibration = load_calibration(path)
        if gpu is not None and gpu != calibration.gpu_model:
            raise UsageError(f"--gpu {gpu!r} but --calibration {path} is for {calibration.gpu_model!r}")
        return calibration
    known = [load_calibration(file) for file in packaged_calibrations()]
    if gpu is None:
        if not known:
            raise UsageError("no calibration is packaged; make one with: memprobe calibrate --out calibration.json")
        return known[0]
    for calibration in known:
        if calibration.gpu_model == gpu:
            return calibration
    models = ", ".join(repr(c.gpu_model) for c in known) or "none"
    raise UsageError(f"no calibration for GPU {gpu!r} (packaged: {models}); on one such GPU run "
                     f"`memprobe calibrate --out FILE`, then pass --calibration FILE")

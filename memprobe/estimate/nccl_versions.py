"""Which NCCL releases the estimate's rules hold for, from NCCL's own source read at each release's tag.

``nccl_rule_sites.json`` (written by ``tools/nccl_rule_sites.py`` from a clone of NVIDIA/nccl) holds, per rule
the estimate uses and per release from 2.27.3 (torch 2.8) to 2.30.7 (torch 2.14), the file, line and statement
of its source. Read release by release, the statements are the same (whitespace aside) except:

* ``P2P NET chunk doubled on Arm with sm100``: from 2.29.2 ``init.cc:751-752`` multiplies the NET P2P chunk by 2
  on Arm hosts with sm100 or newer GPUs (GB200-class); on x86 hosts and on sm90 the chunk is unchanged. It sizes
  the shared NET pool of communicators that span nodes (:func:`net_chunk_ratio`).
* the three channel structures (``channel.cc:42, 45, 56`` to 2.29.3): 2.29.7 passes NCCL's memory manager
  (``channel.cc:43, 46, 58``), 2.30.3 also a suspend class (``ncclMemOffload``); each is still one
  ``ncclCuMemAlloc`` rounded to the allocation granularity (``alloc.h:226`` in 2.28.9, ``:276`` in 2.29.7,
  ``:318`` in 2.30.7): the same bytes. The manager only counts them (``ncclCommMemStats``, 2.29.7).
* ``P2P receive size``: 2.30.7 wraps the loop over two lines (``p2p.cc:488-489``): the same statement.

NCCL 2.31 exists only as pre-releases (2.31.0a*) and 2.32 is not in the public repository the rules were read
from: neither is modelled (docs/estimate.md says when that was last checked and what 2.31.0a7 reads at these sites).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from memprobe.errors import UsageError

SITES_FILE = Path(__file__).with_name("nccl_rule_sites.json")
#: The one rule that differs between the releases read, and the first release with it (init.cc:751-752).
ARM_NET_CHUNK_FROM = (2, 29, 2)


@lru_cache(maxsize=1)
def rule_sites() -> dict[str, Any]:
    """rule -> {"file": path, "at": {version: {"line": n, "statement": text} or None}}."""
    return json.loads(SITES_FILE.read_text(encoding="utf-8"))["rules"]


def read_versions() -> tuple[str, ...]:
    first = next(iter(rule_sites().values()))
    return tuple(sorted(first["at"], key=version_key))


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def normalise(text: str) -> str | None:
    """``2.28.9``, ``2.28.9-1``, ``2.28.9+cuda13.0`` or torch's ``(2, 28, 9)`` -> ``2.28.9``; None if not a version."""
    cleaned = text.strip().strip("()").replace(", ", ".").replace(",", ".")
    cleaned = cleaned.split("+")[0].split("-")[0]
    parts = cleaned.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    return ".".join(str(int(part)) for part in parts)


def net_chunk_ratio(version: str, arm_host: bool, compute_capability: int) -> int:
    """The factor NCCL puts on ``NCCL_P2P_NET_CHUNKSIZE`` (init.cc:751-752 from 2.29.2; none before)."""
    if version_key(version) >= ARM_NET_CHUNK_FROM and arm_host and compute_capability >= 100:
        return 2
    return 1


def checked_version(requested: str) -> str:
    """The version asked for with ``--nccl``, if its rules were read; else exit 2 naming those that were."""
    version = normalise(requested)
    if version is None:
        raise UsageError(f"--nccl {requested!r}: give a version such as 2.28.9")
    if version not in read_versions():
        raise UsageError(f"--nccl {version}: the rules were read for NCCL {', '.join(read_versions())} "
                         f"(NVIDIA/nccl tags); {version} is not one of them")
    return version


def installed_nccl() -> tuple[str, str] | None:
    """(version, where it was read) of the NCCL the installed torch brings, read from package metadata alone: no
    import of torch, no CUDA. torch's CUDA wheels depend on ``nvidia-nccl-cu13`` (torch 2.10 and later) or
    ``nvidia-nccl-cu12``; a CPU-only torch has none."""
    from importlib import metadata

    for distribution in ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11"):
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
        found = normalise(version)
        if found:
            return found, f"{distribution} {version} (installed)"
    return None


def resolve(requested: str | None, calibration_nccl: str, pinned: tuple[str, str] | None = None
            ) -> tuple[str, str, list[str]]:
    """(the NCCL whose rules apply, why that one, warnings). ``--nccl`` wins; else the installed torch's NCCL if its
    rules were read; else, where the installed torch brings none, the one the engine's release pins
    (``Engine.pinned_nccl``); else the calibration's."""
    warnings: list[str] = []
    calibration_version = normalise(calibration_nccl) or calibration_nccl
    if requested is not None:
        version, why = checked_version(requested), "--nccl"
    else:
        installed = installed_nccl()
        if installed and installed[0] in read_versions():
            version, why = installed[0], installed[1]
        elif not installed and pinned is not None and pinned[0] in read_versions():
            version, why = pinned
        else:
            if installed:
                warnings.append(f"the installed NCCL {installed[0]} is not a release the rules were read for "
                                f"({read_versions()[0]} to {read_versions()[-1]}); the calibration's NCCL is used")
            if calibration_version not in read_versions():
                raise UsageError(f"the calibration's NCCL {calibration_nccl} is not a release the rules were read for; "
                                 f"pass --nccl VERSION ({', '.join(read_versions())})")
            version, why = calibration_version, "the calibration's"
    return version, why, warnings + calibration_mismatch(version, calibration_nccl)


def calibration_mismatch(version: str, calibration_nccl: str) -> list[str]:
    """The warning an estimate carries when its rules model another NCCL than its calibration was measured with."""
    if (normalise(calibration_nccl) or calibration_nccl) == version:
        return []
    return [f"the rules model NCCL {version} but the calibration was measured with NCCL {calibration_nccl}: its "
            f"per-process constants are another stack's (memprobe calibrate on one GPU of your own stack makes its own)"]

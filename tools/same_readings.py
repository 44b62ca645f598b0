"""Every (rank, group, step) reading of one run folder beside another's: the largest difference in bytes.

    python tools/same_readings.py OLD_RUN NEW_RUN [OLD_RUN NEW_RUN ...]

Shows that two ways of launching (one torchrun launch per scenario, or one per comparison with a measuring
process forked per scenario) read the same bytes on the same kind of card.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memprobe.model.run_files import load_run  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    worst, same_keys = 0, True
    for old_path, new_path in zip(argv[::2], argv[1::2]):
        old, new = load_run(old_path), load_run(new_path)
        a = {(r.rank, r.group, r.step): r.primary_bytes for r in old.all_readings()}
        b = {(r.rank, r.group, r.step): r.primary_bytes for r in new.all_readings()}
        diffs = [abs(a[key] - b[key]) for key in a.keys() & b.keys() if a[key] is not None and b[key] is not None]
        largest = max(diffs, default=0)
        worst = max(worst, largest)
        same_keys = same_keys and set(a) == set(b)
        gpus = {info.gpu_name for info in new.record.ranks} | {info.gpu_name for info in old.record.ranks}
        print(f"{old_path} -> {new_path}: {len(a)} and {len(b)} readings, same keys {set(a) == set(b)}, "
              f"largest difference {largest} bytes ({', '.join(sorted(gpus))})")
    print(f"largest difference of all: {worst} bytes{'' if same_keys else '; some runs have readings the others lack'}")
    return 0 if worst == 0 and same_keys else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

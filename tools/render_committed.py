"""Render every committed run/comparison folder under results/ with whichever memprobe is on PYTHONPATH.

``memprobe report`` plain, and with --per-rank --timings --split --nccl plus every export (CSV, summary CSV, JSON,
Markdown), one file each under OUT. Render with two trees and compare them, e.g. the code before a refactor:

    git archive <commit> memprobe | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tools/render_committed.py . /tmp/before
    PYTHONPATH=$PWD python tools/render_committed.py . /tmp/after
    diff -r -I '^memprobe: wrote ' /tmp/before /tmp/after   # the "wrote" line names OUT itself
"""
import os
import sys
from pathlib import Path
from typer.testing import CliRunner
from memprobe.cli import app

root, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
folders = sorted({p.parent for p in root.joinpath("results").rglob("run.json")} |
                 {p.parent for p in root.joinpath("results").rglob("comparison.json")})
runner = CliRunner()
os.environ["COLUMNS"] = "200"
for folder in folders:
    name = str(folder.relative_to(root)).replace("/", "__")
    for variant, extra in (("plain", []), ("full", ["--per-rank", "--timings", "--split", "--nccl"])):
        exports = out / "exports" / f"{name}.{variant}"
        exports.mkdir(parents=True, exist_ok=True)
        args = ["report", str(folder), *extra]
        if variant == "full":
            args += ["--csv", str(exports / "long.csv"), "--summary-csv", str(exports / "summary.csv"),
                     "--json", str(exports / "all.json"), "--markdown", str(exports / "table.md")]
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        text = result.output.replace(str(root), "<ROOT>")
        (out / f"{name}.{variant}.txt").write_text(f"exit {result.exit_code}\n{text}")
        for f in exports.iterdir():
            f.write_text(f.read_text().replace(str(root), "<ROOT>"))
print(len(folders), "folders")

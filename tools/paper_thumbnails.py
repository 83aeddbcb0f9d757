"""The README's figure thumbnails: every PNG of every finished experiment under runs/paper, shrunk into
docs/paper/<experiment>-<figure>.png (run after `make reproduce`, then commit docs/paper/).

    .venv/bin/python tools/paper_thumbnails.py [--runs runs/paper] [--out docs/paper] [--width 320]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image


def write_thumbnails(runs: Path, out: Path, width: int) -> list[Path]:
    """One thumbnail per PNG listed in a finished experiment's summary.json; returns the files written."""
    summaries = sorted(runs.glob("*/summary.json"))
    if not summaries:
        raise SystemExit(f"error: no finished experiment under {runs}; run `make reproduce` first")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for summary in summaries:
        experiment = json.loads(summary.read_text())["experiment"]
        for name in json.loads(summary.read_text())["files"]:
            if not name.endswith(".png"):
                continue
            with Image.open(summary.parent / name) as image:
                image = image.convert("RGB")  # no alpha: smaller files, same look on a white page
                image.thumbnail((width, width * 4), Image.LANCZOS)
                target = out / f"{experiment}-{name}"
                image.save(target, optimize=True)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/paper"))
    parser.add_argument("--out", type=Path, default=Path("docs/paper"))
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args(argv)
    for path in write_thumbnails(args.runs, args.out, args.width):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

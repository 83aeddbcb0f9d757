"""`make reproduce`: every experiment's CPU default in sequence (a finished one is not rerun), then
runs/paper/REPORT.md: a line per experiment (reproduced / partly / not, from its checks) and each one's report —
figures and tables — in one document.

An experiment that fails is reported as failed in REPORT.md with its one-line error; the others still run.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from megarank.analysis.report import atomic_write
from megarank.errors import MegarankError
from megarank.experiments import EXPERIMENTS
from megarank.experiments.cli import load_experiment, run_experiment

log = logging.getLogger("megarank")
# cheapest first, so the quick figures exist even if a long sweep is interrupted
ORDER = ("factorized", "scalar", "pretrained", "icl", "vit-sweep", "lm-sweep")
PAPER_ITEM = {"factorized": "Fig 1", "scalar": "Fig 5", "icl": "Fig 2", "lm-sweep": "Fig 3 left + Table 1",
              "vit-sweep": "Fig 3 right", "pretrained": "Fig 4"}
assert set(ORDER) == set(EXPERIMENTS)


def reproduce(*, force: bool = False, progress: bool = True, root: Path = Path("runs/paper")) -> Path:
    """Run every default (skipping finished ones unless force), then write root/REPORT.md; returns its path."""
    start = time.perf_counter()
    outcome: dict[str, str | Path] = {}
    for name in ORDER:
        log.info("reproduce: %s (%s)", name, PAPER_ITEM[name])
        try:
            outcome[name] = run_experiment(name, force=force, progress=progress)
        except MegarankError as err:
            log.error("reproduce: %s failed: %s", name, err)
            outcome[name] = f"failed: {err}"
    report = write_report(outcome, root, time.perf_counter() - start)
    log.info("reproduce: wrote %s", report)
    return report


def write_report(outcome: dict[str, str | Path], root: Path, seconds: float) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["# Reproducing “Weight decay induces low-rank attention layers” (Kobayashi et al., NeurIPS 2024)", "",
             f"`make reproduce`, this invocation {seconds / 60:.1f} min (finished experiments were not rerun; each "
             "one's own wall time is in the table). Verdicts come from each experiment's measured checks.", "",
             "| experiment | paper | verdict | checks | wall time |", "|---|---|---|---|---|"]
    sections = []
    for name in ORDER:
        result = outcome.get(name)
        if not isinstance(result, Path):
            lines.append(f"| {name} | {PAPER_ITEM[name]} | failed | {result} | |")
            continue
        summary = json.loads((result / "summary.json").read_text())
        passed = sum(c["passed"] for c in summary["checks"])
        lines.append(f"| [{name}](#{name}) | {PAPER_ITEM[name]} | **{summary['verdict']}** | "
                     f"{passed}/{len(summary['checks'])} | {summary['seconds'] / 60:.1f} min |")
        body = (result / "report.md").read_text()
        rel = result.relative_to(root) if result.is_relative_to(root) else result.resolve()
        body = re.sub(r"\]\(([^)/]+\.(?:png|csv))\)", lambda m: f"]({rel.as_posix()}/{m[1]})", body)
        body = re.sub(r"^# ", "## ", body, count=1, flags=re.M)
        sections.append(f'<a id="{name}"></a>\n\n{body}\n\n(`{rel.as_posix()}/`: report.md, summary.json, CSVs)')
    text = "\n".join(lines) + "\n\n" + "\n\n---\n\n".join(sections) + "\n"
    path = root / "REPORT.md"
    atomic_write(path, lambda f: f.write(text))
    return path


def experiment_configs() -> dict[str, object]:
    """Every default config, resolved (what `make reproduce` runs); raises on a broken one."""
    return {name: load_experiment(name)[1] for name in ORDER}

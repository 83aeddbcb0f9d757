"""`make reproduce`: every experiment's CPU default in the registry's order (a finished one is not rerun), then
runs/paper/REPORT.md: a row per experiment (its verdict from its checks, or `failed` with the one-line error),
the paper's in one table and those beyond the paper in a section of their own, and each finished one's report
— checks, tables, figures — in one document.

One experiment failing, whatever the error, is a row of REPORT.md, not the end of the run: the others still
run and REPORT.md is always written; the command then exits non-zero (cli.py).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from megarank.errors import MegarankError
from megarank.experiments.registry import EXPERIMENTS
from megarank.experiments.runner import load_experiment, run_experiment
from megarank.files import atomic_write_text

log = logging.getLogger("megarank")


@dataclass
class Reproduced:
    report: Path
    """runs/paper/REPORT.md."""
    failed: list[str]
    """The experiments that raised, in order (empty: every one has a result)."""


def reproduce(*, force: bool = False, progress: bool = True, root: Path = Path("runs/paper")) -> Reproduced:
    """Run every default (skipping finished ones unless force), then write root/REPORT.md."""
    start = time.perf_counter()
    outcome: dict[str, str | Path] = {}
    for entry in EXPERIMENTS:
        log.info("reproduce: %s (%s)", entry.name, entry.reproduces)
        try:
            outcome[entry.name] = run_experiment(entry.name, force=force, progress=progress)
        except Exception as err:  # any failure is a row of REPORT.md; the rest still run
            if isinstance(err, MegarankError):
                log.error("reproduce: %s failed: %s", entry.name, err)
            else:  # not a user error: keep the traceback in the log for whoever debugs it
                log.exception("reproduce: %s failed", entry.name)
            outcome[entry.name] = one_line(err)
    report = write_report(outcome, root, time.perf_counter() - start)
    failed = [name for name, result in outcome.items() if not isinstance(result, Path)]
    log.info("reproduce: wrote %s%s", report, f" ({len(failed)} failed: {', '.join(failed)})" if failed else "")
    return Reproduced(report=report, failed=failed)


def one_line(err: BaseException) -> str:
    """The error's message on one line; the exception's type too unless it is a user error (MegarankError)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(err, MegarankError) else f"{type(err).__name__}: {text}".rstrip(": ")


def write_report(outcome: dict[str, str | Path], root: Path, seconds: float) -> Path:
    """REPORT.md from outcome (name -> its out_dir, or the text of its failure); returns its path. The paper's
    experiments first, then those beyond it (registry's beyond_paper) in a table and section of their own."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["# Reproducing “Weight decay induces low-rank attention layers” (Kobayashi et al., NeurIPS 2024)", "",
             f"`make reproduce`, this invocation {seconds / 60:.1f} min (finished experiments were not rerun; each "
             "one's own wall time is in the table). Verdicts come from each experiment's measured checks; "
             "docs/paper.md, \"## Experiments\", describes each setup.", ""]
    paper = [e for e in EXPERIMENTS if not e.beyond_paper]
    beyond = [e for e in EXPERIMENTS if e.beyond_paper]
    sections = []
    lines += _verdict_table(paper, "paper", outcome, root, sections)
    if beyond:
        lines += ["", "## Beyond the paper", "",
                  "Later claims about weight decay and attention, tested with the same machinery at the same CPU "
                  "scale (docs/paper.md, \"## Beyond the paper\"); a verdict says whether the claim shows here.", ""]
        lines += _verdict_table(beyond, "tests", outcome, root, sections)
    text = "\n".join(lines) + "\n\n" + "\n\n---\n\n".join(sections) + "\n"
    path = root / "REPORT.md"
    atomic_write_text(path, text)
    return path


def _verdict_table(entries, what: str, outcome: dict[str, str | Path], root: Path, sections: list[str]) -> list[str]:
    """The table rows of `entries` (a verdict per experiment); appends each finished one's report to sections."""
    lines = [f"| experiment | {what} | verdict | checks | wall time |", "|---|---|---|---|---|"]
    for entry in entries:
        name, result = entry.name, outcome.get(entry.name)
        if not isinstance(result, Path):
            error = str(result or "not run").replace("|", "\\|")
            lines.append(f"| {name} | {entry.reproduces} | failed | {error} | |")
            continue
        summary = json.loads((result / "summary.json").read_text())
        passed = sum(c["passed"] for c in summary["checks"])
        lines.append(f"| [{name}](#{name}) | {entry.reproduces} | **{summary['verdict']}** | "
                     f"{passed}/{len(summary['checks'])} | {summary['seconds'] / 60:.1f} min |")
        body = (result / "report.md").read_text()
        where = result.resolve()  # linked relative to REPORT.md when below it, absolute otherwise
        rel = where.relative_to(root.resolve()) if where.is_relative_to(root.resolve()) else where
        body = re.sub(r"\]\(([^)/]+\.(?:png|csv))\)", lambda m: f"]({rel.as_posix()}/{m[1]})", body)
        body = re.sub(r"^# ", "## ", body, count=1, flags=re.M)
        sections.append(f'<a id="{name}"></a>\n\n{body}\n\n(`{rel.as_posix()}/`: report.md, summary.json, CSVs)')
    return lines


def experiment_configs() -> dict[str, object]:
    """Every default config, resolved (what `make reproduce` runs); raises on a broken one."""
    return {entry.name: load_experiment(entry.name)[1] for entry in EXPERIMENTS}

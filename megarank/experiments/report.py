"""An experiment's result and its files: report.md (the verdict, its checks and the tables as tables of numbers,
the figures embedded), the PNGs and CSVs, and summary.json.

summary.json always holds these keys, whatever the experiment (the README documents each experiment's own):
    experiment  its name           title     the paper's figure/table it reproduces
    verdict     'reproduced' | 'partly' | 'not' — decided from the measured numbers by the experiment's checks
    checks      [{name, passed, detail}]: the measured criteria behind the verdict
    config      the resolved config (every knob)   seconds   wall time   files   the other files written
Written like megarank-rank's results: each file under a temp name, then renamed (megarank/files.py);
summary.json removed first and written last, so a directory without it holds no finished result and
`make reproduce` reruns it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megarank import __version__
from megarank.analysis.report import json_ready, write_csv, write_figure
from megarank.files import atomic_write_text

VERDICTS = ("reproduced", "partly", "not")


@dataclass
class Check:
    """One measured criterion of the paper's claim, e.g. 'QK rank falls as wd_attn rises'."""

    name: str
    passed: bool
    detail: str  # the numbers behind it, e.g. "mean QK rank 32.0 -> 14.5 of 32 from wd_attn 0 to 3"


@dataclass
class Figure:
    name: str  # file name without .png
    caption: str
    figure: object  # a matplotlib Figure


@dataclass
class Table:
    name: str  # CSV file name without .csv
    columns: tuple[str, ...]
    rows: list[dict]
    caption: str = ""
    in_report: bool = True  # also rendered as a markdown table in report.md


@dataclass
class Result:
    """What an experiment measured, ready to be written."""

    experiment: str
    title: str
    checks: list[Check]
    summary: dict  # the experiment's own summary.json keys (rows, cells, ...)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    markdown: str = ""  # extra markdown tables (e.g. the Table 1 analogue laid out as the paper's grid)

    @property
    def verdict(self) -> str:
        """'reproduced' when every check passed, 'not' when none did, 'partly' in between."""
        passed = sum(check.passed for check in self.checks)
        if self.checks and passed == len(self.checks):
            return "reproduced"
        return "partly" if passed else "not"


def is_finished(out_dir: Path, config: dict | None = None) -> bool:
    """True when out_dir holds a finished result (summary.json), and, if given, of this very config."""
    summary = out_dir / "summary.json"
    if not summary.is_file():
        return False
    if config is None:
        return True
    try:
        return json.loads(summary.read_text()).get("config") == json_ready(config)
    except (json.JSONDecodeError, OSError):
        return False


def markdown_table(columns: tuple[str, ...] | list[str], rows: list[dict]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|")  # a bare '|' would end the cell

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def timescale_table(records: list[dict], keys: list[str] | tuple[str, ...] = ()) -> Table:
    """The decay's timescales per cell and optimizer group (megarank/optim/timescales.py), read off the sweep's
    gathered records (megarank/sweep/gather.py: 'sum_lr_wd/<group>', 'tau_steps/<group>', 'tau_epochs/<group>'):
    one row per cell and group, the cell's values of `keys` (its axes) first. A blank τ is infinite (no decay)
    or, in epochs, a run that did not record its data size."""
    rows = []
    for record in records:
        for group in dict.fromkeys(k.split("/", 1)[1] for k in record if k.startswith("sum_lr_wd/")):
            rows.append({**{k: record.get(k) for k in keys}, "cell": record.get("cell"), "group": group,
                         "sum_lr_wd": record[f"sum_lr_wd/{group}"], "tau_steps": record.get(f"tau_steps/{group}"),
                         "tau_epochs": record.get(f"tau_epochs/{group}")})
    return Table("timescales", (*keys, "cell", "group", "sum_lr_wd", "tau_steps", "tau_epochs"), rows,
                 "Decay per cell and group: Σ lr·λ over the run, τ = 1/(lr_peak·λ) in steps and epochs")


def write_result(result: Result, out_dir: Path, config, seconds: float) -> Path:
    """Write every file of `result` into out_dir; returns summary.json's path (written last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    summary_path.unlink(missing_ok=True)
    written: list[str] = []
    for fig in result.figures:
        write_figure(out_dir / f"{fig.name}.png", fig.figure)
        written.append(f"{fig.name}.png")
    for table in result.tables:
        write_csv(out_dir / f"{table.name}.csv", tuple(table.columns), table.rows)
        written.append(f"{table.name}.csv")
    report = render_markdown(result, seconds)
    atomic_write_text(out_dir / "report.md", report)
    written.append("report.md")
    document = {"experiment": result.experiment, "title": result.title, "verdict": result.verdict,
                "checks": [asdict(c) for c in result.checks], **result.summary,
                "config": asdict(config) if not isinstance(config, dict) else config,
                "seconds": round(seconds, 2), "version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": written}
    text = json.dumps(json_ready(document), indent=2)
    atomic_write_text(summary_path, text + "\n")
    return summary_path


def render_markdown(result: Result, seconds: float) -> str:
    """report.md: the verdict, the checks as a table (each with the numbers it was decided on), the tables,
    the figures. Numbers only; what they mean is in docs/paper.md, "## Experiments"."""
    parts = [f"# {result.title}", "",
             f"**Verdict: {result.verdict}** ({sum(c.passed for c in result.checks)}/{len(result.checks)} checks; "
             f"{seconds:.0f} s)", "",
             markdown_table(("check", "passed", "measured"),
                            [{"check": c.name, "passed": "✔" if c.passed else "✘", "measured": c.detail}
                             for c in result.checks]), ""]
    if result.markdown:
        parts += [result.markdown.strip(), ""]
    for table in result.tables:
        if table.in_report:
            parts += [f"**{table.caption or table.name}** (`{table.name}.csv`)", "",
                      markdown_table(table.columns, table.rows), ""]
    for fig in result.figures:
        parts += [f"![{fig.caption}]({fig.name}.png)", "", f"*{fig.caption}*", ""]
    return "\n".join(parts)


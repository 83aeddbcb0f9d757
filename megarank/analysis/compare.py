"""Several checkpoints side by side: a weight-decay sweep (rank vs λ_attn) or the steps of one run (rank vs step).

    compare.csv   one row per checkpoint and product: where it came from (COMPARE_COLUMNS up to 'product')
                  and each metric's mean over all layers and heads
    compare.json  the same plus each checkpoint's per-layer means and settings (strict JSON, NaN as null)
    compare.png   mean rank and effective rank against x: wd_attn when the checkpoints differ in it, else the
                  step when they differ in that, else their order on the command line
The step of a megarank checkpoint is the one it records; a Hugging Face directory records none, so its step is
the number ending its name (STEP_NAME: step1000, checkpoint-1000, global_step1000, iter_0001000, or Pythia's
revision names saved as e.g. pythia-70m-step143000), and its line in the step plot is its parent directory.
The decay columns are the decay in effect at each checkpoint (the marker's record of its last step's decay,
megarank/ckpt/marker.py; the configured one for older markers): wd_qk and wd_ov of W_Q, W_K and W_V, W_O, and
wd_attn their common value (blank when they differ). Each written whole or not at all (megarank/files.py),
compare.json last.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from megarank import __version__
from megarank.analysis.report import RankTable, json_ready, write_csv, write_figure
from megarank.analysis.spectra import METRICS, PRODUCTS
from megarank.errors import MegarankError
from megarank.files import atomic_write_text

COMPARE_COLUMNS = ("source", "label", "family", "step", "wd_attn", "wd_qk", "wd_ov", "wd_mlp", "product", *METRICS)
X_CHOICES = ("auto", "wd_attn", "step", "index")
STEP_NAME = re.compile(r"(?:^|[^a-z0-9])(?:global_step|step|checkpoint|iter)[-_]?(?P<step>\d+)$", re.IGNORECASE)
STEP_HELP = ("a megarank checkpoint's recorded step; for a Hugging Face directory the number ending its name: "
             "step1000, checkpoint-1000, global_step1000, iter_0001000, pythia-70m-step143000")


def step_from_name(path: str | Path) -> int | None:
    """The training step a directory's name states (see STEP_NAME), or None."""
    match = STEP_NAME.search(Path(path).name)
    return int(match["step"]) if match else None


def x_value(table: RankTable, key: str):
    """A checkpoint's wd_attn, wd_mlp or step; the step of a Hugging Face directory from its name."""
    recorded = table.info.details.get(key)
    if recorded is None and key == "step" and table.info.format == "hf-safetensors":
        return step_from_name(table.info.source)
    return recorded


def label(table: RankTable) -> str:
    """A short name for a checkpoint: run@step for megarank tags, the directory name otherwise."""
    source = Path(table.info.source)
    step = table.info.details.get("step")
    if step is None:  # a Hugging Face directory: its name (which holds any step)
        return source.name
    run = source.parent.parent if source.parent.name == "checkpoints" else source.parent
    return f"{run.name}@{step}"


def group(table: RankTable, x_name: str) -> str:
    """Which line of the compare plot a checkpoint belongs to: its run when x is the step, its step when x is
    wd_attn (a sweep compared at several steps), one line otherwise."""
    if x_name == "step":
        if table.info.details.get("step") is None:  # a Hugging Face directory: one line per parent directory
            return Path(table.info.source).parent.name
        return label(table).rpartition("@")[0]
    if x_name == "wd_attn":
        return f"step {x_value(table, 'step')}"
    return ""


def choose_x(tables: list[RankTable], x: str) -> str:
    """The x axis: as asked, or for 'auto' the first of wd_attn, step that varies across the checkpoints."""
    if x not in X_CHOICES:
        raise MegarankError(f"--x must be one of {', '.join(X_CHOICES)}, got '{x}'")
    if x == "index":
        return x
    if x != "auto":
        for table in tables:
            if x_value(table, x) is None:
                where = ("megarank checkpoints record it; a Hugging Face directory's name must end in it, e.g. "
                         "step1000 or checkpoint-1000" if x == "step" else "only megarank checkpoints do")
                raise MegarankError(f"--x {x}: '{table.info.source}' records no {x} ({where}); use --x index")
        return x
    for key in ("wd_attn", "step"):
        values = [x_value(table, key) for table in tables]
        if None not in values and len(set(values)) > 1:
            return key
    return "index"


def compare_rows(tables: list[RankTable]) -> list[dict]:
    rows = []
    for table in tables:
        details, means = table.info.details, table.means()
        for product in PRODUCTS:
            rows.append({"source": table.info.source, "label": label(table), "family": table.info.family,
                         "step": x_value(table, "step"), "wd_attn": details.get("wd_attn"),
                         "wd_qk": details.get("wd_qk"), "wd_ov": details.get("wd_ov"),
                         "wd_mlp": details.get("wd_mlp"), "product": product, **means[product]})
    return rows


def write_compare(tables: list[RankTable], out_dir: Path, *, x: str = "auto", plots: bool = True) -> list[Path]:
    """compare.csv, compare.png and compare.json in out_dir; returns their paths, compare.json last."""
    if len(tables) < 2:
        raise MegarankError("compare needs at least two checkpoints")
    x_name = choose_x(tables, x)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "compare.json"
    summary.unlink(missing_ok=True)
    rows = compare_rows(tables)
    written = [out_dir / "compare.csv"]
    write_csv(written[0], COMPARE_COLUMNS, rows)
    if plots:
        from megarank.analysis import plots as plotting

        means = {p: {m: [t.means()[p][m] for t in tables] for m in METRICS} for p in PRODUCTS}
        d_heads = {t.info.d_head for t in tables}
        xs = [None if x_name == "index" else x_value(t, x_name) for t in tables]
        figure = plotting.compare(xs, [label(t) for t in tables], [group(t, x_name) for t in tables], means,
                                  x_name, d_heads.pop() if len(d_heads) == 1 else None)
        written.append(out_dir / "compare.png")
        write_figure(written[-1], figure)
    document = {"tool": "megarank-rank compare", "version": __version__, "x": x_name, "rows": rows,
                "checkpoints": [table.summary([]) for table in tables], "files": [p.name for p in written]}
    text = json.dumps(json_ready(document), indent=2)
    atomic_write_text(summary, text + "\n")
    return [*written, summary]

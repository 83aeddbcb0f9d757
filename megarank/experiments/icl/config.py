"""The icl experiment's knobs: task, model, optimisers, the λ × optimiser × seed grid, what is recorded and
the thresholds of the checks; and the two reference losses the task defines."""

from __future__ import annotations

from dataclasses import dataclass, field

from megarank.analysis.spectra import DEFAULT_RTOL
from megarank.errors import MegarankError

OPTIMIZERS = ("adam_l2", "adamw")
OPTIMIZER_LABELS = {"adam_l2": "Adam + L2", "adamw": "AdamW"}
ATTENTION_KINDS = ("linear", "softmax")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MegarankError(message)


@dataclass
class Config:
    """The ICL sweep: task, model, optimiser, the λ × optimiser × seed grid, and what is recorded."""

    d: int = 8
    """Input dimension of the regression (x_i, w in R^d)."""
    n_context: int = 32
    """Context pairs (x_i, y_i) per sequence; the sequence is n_context + 1 tokens with the query."""
    noise_std: float = 0.0
    """σ of the label noise y = wᵀx + σε (on the context and the query's target alike)."""
    d_model: int = 16
    """Residual width; tokens [x, y] (d + 1 numbers) are zero-padded to it, the spare dimensions are free
    scratch space for the layers. At least d + 1, divisible by n_heads."""
    n_layers: int = 2
    """Attention layers (the paper's Fig 2: 2)."""
    n_heads: int = 2
    """Heads per layer; d_head = d_model / n_heads bounds each product's rank."""
    attention: str = "linear"
    """'linear' (Σ_j (q·k_j) v_j / n_context, von Oswald et al.) or 'softmax' (softmax(q·k/√d_head) over the
    context tokens)."""
    init_std: float = 0.1
    """Std of the normal init of every projection."""
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    """Which to run: 'adam_l2' (torch.optim.Adam(weight_decay=λ): λθ added to the gradient, then
    preconditioned) and/or 'adamw' (torch.optim.AdamW(weight_decay=λ): θ <- θ(1 − lr·λ) decoupled)."""
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.03, 0.1, 0.3, 1.0])
    """Weight decay λ on every projection. Must include 0 (the checks compare against it). The default spans
    steps·lr·λ = 0.12 … 12 (steps 4000, lr 3e-3): from 'too short for the decay to act' to the gradient-flow
    imbalance factor exp(−2·lr·λ·steps) = e⁻²⁴. λ = 0 is run once per seed: Adam and AdamW coincide there."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """One run per seed (init and data stream), shared by every λ and optimiser."""
    steps: int = 4000
    """Optimiser steps per run."""
    batch_size: int = 64
    """Sequences per step (fresh each step)."""
    lr: float = 3e-3
    """Constant learning rate (no warm-up or decay, so the reference rate 2·lr·λ is one number)."""
    beta1: float = 0.9
    """Adam β1."""
    beta2: float = 0.999
    """Adam β2."""
    eps: float = 1e-8
    """Adam ε."""
    eval_batch_size: int = 1024
    """Sequences in the fixed held-out batch the recorded loss is measured on."""
    record_every: int = 50
    """Record the loss and the per-head metrics every this many steps (and at step 0 and the last step)."""
    rtol: float = DEFAULT_RTOL
    """rank counts σ > rtol·σ_max per head, as `megarank-rank --rtol` (default 0.01)."""
    atol: float = 1e-3
    """rank_atol counts σ > atol, as `megarank-rank --atol`: it reads a head decayed to ~0 as rank 0, where the
    scale-free rank counts its leftover jitter. Comparable here because every run shares the model and init
    (init σ_max of a product ≈ 0.1–0.3 at init_std 0.1)."""
    learnt_fraction: float = 0.5
    """The task counts as learnt at λ = 0 when the final loss is below this fraction of the trivial
    predictor's (d + noise_std²)."""
    collapsed_fraction: float = 0.9
    """A run whose final loss is above this fraction of the trivial predictor's has collapsed (decay drove the
    weights to ~0); its ranks count leftover jitter, so the rank and balance checks leave it out."""
    balanced_fraction: float = 0.5
    """A λ > 0 counts as balancing the factors when its final relative imbalance is below this fraction of
    λ = 0's (same optimiser and seed); judged at the λ with steps·lr·λ >= 1."""
    out_dir: str = "runs/paper/icl"
    """Where report.md, the PNGs, the CSVs and summary.json go."""

    def __post_init__(self):
        _require(self.d >= 1, f"d must be >= 1, got {self.d}")
        _require(self.n_context >= 1, f"n_context must be >= 1, got {self.n_context}")
        _require(self.noise_std >= 0, f"noise_std must be >= 0, got {self.noise_std}")
        _require(self.d_model >= self.d + 1,
                 f"d_model must be >= d + 1 = {self.d + 1} to hold the tokens [x, y], got {self.d_model}")
        _require(self.n_layers >= 1, f"n_layers must be >= 1, got {self.n_layers}")
        _require(self.n_heads >= 1 and self.d_model % self.n_heads == 0,
                 f"n_heads must divide d_model = {self.d_model}, got {self.n_heads}")
        _require(self.attention in ATTENTION_KINDS,
                 f"attention must be one of {', '.join(ATTENTION_KINDS)}, got '{self.attention}'")
        _require(self.init_std > 0, f"init_std must be > 0, got {self.init_std}")
        _require(len(self.optimizers) > 0 and all(o in OPTIMIZERS for o in self.optimizers)
                 and len(set(self.optimizers)) == len(self.optimizers),
                 f"optimizers must be distinct names from {', '.join(OPTIMIZERS)}, got {list(self.optimizers)}")
        _require(all(lam >= 0 for lam in self.lambdas) and len(set(self.lambdas)) == len(self.lambdas),
                 f"lambdas must be distinct and >= 0, got {list(self.lambdas)}")
        _require(0.0 in self.lambdas, f"lambdas must include 0 (the checks compare against it), got "
                                      f"{list(self.lambdas)}; e.g. lambdas=[0,0.1,1]")
        _require(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
                 f"seeds must be a non-empty list of distinct ints, got {list(self.seeds)}")
        _require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
                 f"beta1 and beta2 must lie in [0, 1), got {self.beta1}, {self.beta2}")
        _require(self.eps > 0, f"eps must be > 0, got {self.eps}")
        _require(self.record_every >= 1, f"record_every must be >= 1, got {self.record_every}")
        _require(0 < self.rtol < 1, f"rtol must lie in (0, 1), got {self.rtol}")
        _require(0 < self.learnt_fraction <= 1, f"learnt_fraction must lie in (0, 1], got {self.learnt_fraction}")
        _require(self.atol > 0, f"atol must be > 0, got {self.atol}")
        _require(self.learnt_fraction <= self.collapsed_fraction <= 1,
                 f"collapsed_fraction must lie in [learnt_fraction, 1], got {self.collapsed_fraction}")
        _require(0 < self.balanced_fraction <= 1,
                 f"balanced_fraction must lie in (0, 1], got {self.balanced_fraction}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def trivial_loss(self) -> float:
        """E[y_q²] = d + σ²: the loss of predicting 0."""
        return self.d + self.noise_std ** 2

    @property
    def one_step_gd_loss(self) -> float:
        """The loss of one gradient-descent step from w = 0 with the best step size (derived in task.py)."""
        return self.d * (1 - self.n_context / (self.n_context + self.d + 1 + self.noise_std ** 2)) + self.noise_std ** 2

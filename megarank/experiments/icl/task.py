"""The task: in-context linear regression (von Oswald et al. 2023, "Transformers learn in-context by gradient
descent"; Garg et al. 2022).

Per sequence draw w ~ N(0, I_d), then N context pairs x_i ~ N(0, I_d), y_i = wᵀx_i + σε_i, and a query x_q. The
tokens are e_i = [x_i, y_i] and e_q = [x_q, 0], zero-padded to d_model; the model must write the query's y.
Every batch is fresh, drawn from a seeded generator. The trivial predictor ŷ = 0 scores E[y²] = d + σ²; one
step of gradient descent from w = 0 with the best step size (what one linear-attention layer can implement,
von Oswald et al.) scores d(1 − N/(N + d + 1 + σ²)) + σ² (E[S²] = (N + d + 1)/N · I for the Wishart
S = XᵀX/N): Config.trivial_loss and Config.one_step_gd_loss.
"""

from __future__ import annotations

import torch

from megarank.experiments.icl.config import Config


def sample_batch(cfg: Config, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, N+1, d_model), target (B,)): N context tokens [x_i, y_i, 0…] then the query [x_q, 0, 0…]."""
    d, n = cfg.d, cfg.n_context
    w = torch.randn(batch, d, 1, generator=generator)
    x = torch.randn(batch, n + 1, d, generator=generator)
    y = (x @ w).squeeze(-1) + cfg.noise_std * torch.randn(batch, n + 1, generator=generator)  # (B, N+1)
    tokens = torch.zeros(batch, n + 1, cfg.d_model)
    tokens[:, :, :d] = x
    tokens[:, :n, d] = y[:, :n]  # the query's y stays 0: it is what the model predicts
    return tokens, y[:, n]

"""Training: one run per (optimiser, λ, seed), from seed's init on seed's data stream (one stream per seed,
shared by every λ and optimiser, so the runs of one seed differ only in λ and the optimiser).

Under gradient flow on L + (λ/2)‖θ‖², d/dt(AᵀA − BᵀB) = −2λ(AᵀA − BᵀB), a factor exp(−2·lr·λ) per step. Adam's
per-coordinate preconditioning breaks the cancellation that gives this law (even at λ = 0 the imbalance is no
longer conserved), and AdamW's decoupled decay shrinks every weight by (1 − lr·λ) per step whatever the
gradient, so neither optimiser is expected to follow the rate exactly; the tables measure how far each is.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from megarank.experiments.icl.config import Config
from megarank.experiments.icl.metrics import Run, attention_metrics
from megarank.experiments.icl.model import AttentionOnly
from megarank.experiments.icl.task import sample_batch


def make_optimizer(name: str, params, lam: float, cfg: Config) -> torch.optim.Optimizer:
    """Every parameter is an attention projection, so one group, all decayed by λ."""
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=lam)
    return torch.optim.Adam(params, **kwargs) if name == "adam_l2" else torch.optim.AdamW(params, **kwargs)


def train_one(cfg: Config, optimizer: str, lam: float, seed: int, bar: tqdm) -> tuple[Run, AttentionOnly]:
    """Train one model from seed's init on seed's data stream; returns its record and the final model."""
    torch.manual_seed(seed)
    model = AttentionOnly(cfg)
    data = torch.Generator().manual_seed(seed)
    # the held-out batch comes from a stream of its own, so it never overlaps the training batches
    eval_tokens, eval_target = sample_batch(cfg, cfg.eval_batch_size, torch.Generator().manual_seed(2 ** 31 - 1 - seed))
    opt = make_optimizer(optimizer, model.parameters(), lam, cfg)
    run = Run(optimizer, lam, seed)

    def record(step: int) -> None:
        with torch.no_grad():
            run.loss.append(float((model(eval_tokens) - eval_target).square().mean()))
        run.steps.append(step)
        run.heads.append(attention_metrics(model, cfg.d_head, cfg.rtol, cfg.atol))

    record(0)
    for step in range(1, cfg.steps + 1):
        tokens, target = sample_batch(cfg, cfg.batch_size, data)
        loss = (model(tokens) - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.record_every == 0 or step == cfg.steps:
            record(step)
        bar.update(1)
    return run, model


def sweep(cfg: Config, progress: bool) -> list[Run]:
    """Every (optimiser, λ, seed); λ = 0 is trained once per seed and shared (Adam and AdamW coincide there)."""
    jobs = [(o, lam, s) for s in cfg.seeds for lam in cfg.lambdas for o in cfg.optimizers
            if lam > 0 or o == cfg.optimizers[0]]
    runs: list[Run] = []
    # the matrices are at most (64·33) × 16: intra-op threads only add synchronisation
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tqdm(total=len(jobs) * cfg.steps, desc="icl", unit="step", disable=not progress) as bar:
            for optimizer, lam, seed in jobs:
                bar.set_postfix_str(f"{optimizer} λ={lam:g} seed={seed}")
                run, _ = train_one(cfg, optimizer, lam, seed, bar)
                runs.append(run)
                if lam == 0:  # the same run, filed under each optimiser
                    runs += [Run(o, 0.0, seed, run.steps, run.loss, run.heads) for o in cfg.optimizers[1:]]
    finally:
        torch.set_num_threads(threads)
    return runs

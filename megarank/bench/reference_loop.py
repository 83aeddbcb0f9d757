"""The plain PyTorch training loop megarank's speed is measured against (tools/bench.py): the same model, data,
decay groups, AdamW, clipping and schedule, in one process, with no DeepSpeed, no process group and no
logging beyond a loss per step. megarank's own step should cost no more than this on one device; the test
(tests/bench/test_reference_loop.py) checks that both train the model to the same losses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from megarank.config import ExperimentConfig, gradient_accumulation_steps
from megarank.optim.groups import build_param_groups
from megarank.optim.schedule import warmup_cosine
from megarank.parallel.layout import build_layout
from megarank.train.distributed import init_distributed
from megarank.train.tasks import build_task


@dataclass
class ReferenceRun:
    losses: list[float]
    step_seconds: list[float]
    items_per_step: int


def train_reference(cfg: ExperimentConfig, steps: int) -> ReferenceRun:
    """`steps` optimizer steps of cfg's model, fp32, on this process's device."""
    world = init_distributed()  # a world of one: the task's data sharding asks for the DP layout
    layout = build_layout(1)
    task = build_task(cfg, layout, world.device, is_main=False)
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(world.device).train()
    optim = cfg.optim
    kind = torch.optim.AdamW if optim.decoupled else torch.optim.Adam  # Adam: decay as L2 in the gradient
    optimizer = kind(build_param_groups(model, optim), lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)
    scheduler = warmup_cosine(optimizer, optim, cfg.train.max_steps)
    grad_accum = gradient_accumulation_steps(cfg, 1)
    batches = task.train_batches(0)
    losses, seconds = [], []
    for _ in range(steps):
        start = time.perf_counter()
        total = 0.0
        for _ in range(grad_accum):
            x, y = next(batches)
            loss = model(x, y)
            (loss / grad_accum).backward()  # the mean over the global batch, as DeepSpeed scales it
            total += loss.item()
        if optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        losses.append(total / grad_accum)
    return ReferenceRun(losses, seconds, cfg.train.global_batch * task.items_per_sample)

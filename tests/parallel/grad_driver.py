"""Test driver, run on every rank by a launcher: the training pipeline's own pieces (layout, data, GPT,
parallelize, DeepSpeed engine with mpu) for one global batch; writes every parameter's full gradient —
gathered over data-parallel ranks by DeepSpeed's safe_get_full_grad and over TP ranks here — to OUT.

usage: grad_driver.py OUT CONFIG [key=value ...]
"""

import sys

import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad

from megarank.config import DataInfo, gradient_accumulation_steps, load_config, resolve
from megarank.models.gpt import GPT
from megarank.parallel.layout import DeepSpeedMPU, build_layout
from megarank.parallel.tensor_parallel import apply_tensor_parallel
from megarank.data.batches import micro_batch
from megarank.data.training_data import open_text_data
from megarank.train.distributed import init_distributed
from megarank.train.engine import build_engine

out, config, *overrides = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
cfg = load_config(config, overrides)
world = init_distributed()
layout = build_layout(cfg.parallel.tp)
grad_accum = gradient_accumulation_steps(cfg, world.world_size)
data = open_text_data(cfg.data, seq_len=cfg.model.seq_len, seed=cfg.seed, show_progress=False)
cfg = resolve(cfg, DataInfo(vocab_size=data.vocab_size))
torch.manual_seed(cfg.seed)
model = GPT(cfg.model)
apply_tensor_parallel(model, layout, seed=cfg.seed, device=world.device)
engine, _ = build_engine(model, cfg, grad_accum=grad_accum, device=world.device, mpu=DeepSpeedMPU(layout))
for micro_step in range(grad_accum):
    x, y = micro_batch(data, batch_start=0, micro_step=micro_step, dp_rank=layout.dp_rank, dp_size=layout.dp_size,
                       micro_batch=cfg.train.micro_batch, device=world.device)
    engine.backward(engine(x, y))
    if micro_step < grad_accum - 1:
        engine.step()  # inside the accumulation window: no optimizer step

grads = {}
for name, param in engine.module.named_parameters():
    grad = safe_get_full_grad(param).float()
    if getattr(param, "tensor_model_parallel", False) and layout.tp_size > 1:
        parts = [torch.empty_like(grad) for _ in range(layout.tp_size)]
        dist.all_gather(parts, grad.contiguous(), group=layout.tp_group)
        grad = torch.cat(parts, dim=param.partition_dim)
    grads[name] = grad
if world.is_main:
    torch.save(grads, out)
dist.barrier()

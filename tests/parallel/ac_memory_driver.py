"""Test driver: one training step (forward, backward) of an 8-layer, 256-wide GPT at seq 256, micro batch 8,
under activation checkpointing MODE, at the TP size of the launch (1 process: plain python; 2: a launcher);
rank 0 writes the growth of its peak resident memory over the step, and the loss, as JSON to OUT. Run with
glibc's mmap threshold pinned low (MALLOC_MMAP_THRESHOLD_) so freed activations go back to the OS at once and
the peak resident set follows the peak of live tensors.

usage: ac_memory_driver.py OUT MODE
"""

import json
import resource
import sys

import torch

from megarank.config import ModelConfig
from megarank.models.gpt import GPT
from megarank.parallel.activation_checkpointing import apply_activation_checkpointing
from megarank.parallel.layout import build_layout
from megarank.parallel.tensor_parallel import apply_tensor_parallel
from megarank.train.distributed import init_distributed

out, mode = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
world = init_distributed()
layout = build_layout(world.world_size)  # all processes are TP ranks
torch.manual_seed(0)
model = GPT(ModelConfig(n_layers=8, d_model=256, n_heads=8, seq_len=256, vocab_size=256)).train()
rng = apply_tensor_parallel(model, layout, seed=0, device=world.device)
apply_activation_checkpointing(model, mode, 2, rng)
x = torch.randint(0, 256, (8, 256), generator=torch.Generator().manual_seed(1))
model(x[:1, :8], x[:1, :8]).backward()  # warm up allocator and kernels on a tiny batch
model.zero_grad(set_to_none=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss = model(x, x)
loss.backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if world.rank == 0:
    with open(out, "w") as f:
        json.dump({"step_peak_mb": (after - before) / 1024, "loss": loss.item()}, f)

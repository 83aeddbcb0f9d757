"""torch.compile of the transformer blocks (train.compile), applied after tensor parallelism and activation
checkpointing, as torchtitan compiles per block: every block runs the same code, so one compiled graph serves
all of them, and compile time does not grow with depth.

What is compiled is each block's inner forward (Block._forward), so parameter names do not change and a
checkpointed block recomputes through the compiled code. fullgraph=True makes a graph break an error at the
first step rather than a silent slowdown; at most two graphs per block are allowed (training and evaluation),
so a recompilation every step fails the run instead of compiling forever.

Under ZeRO-3, DeepSpeed gathers parameters in hooks on every submodule, and a hook inside a fullgraph region is
a graph break. The blocks are therefore marked ZeRO-3 leaf modules: their parameters are gathered once at the
block boundary, outside the compiled code, as FSDP2 wraps per block under torchtitan's compile.
"""

from __future__ import annotations

import torch
from deepspeed.utils import set_z3_leaf_modules
from torch import nn

GRAPHS_PER_BLOCK = 2  # train and eval mode


def compile_blocks(model: nn.Module, zero_stage: int = 0) -> int:
    """Compile every block of model.blocks in place (before deepspeed.initialize); returns how many."""
    torch._dynamo.config.recompile_limit = GRAPHS_PER_BLOCK
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    for block in model.blocks:
        block._forward = torch.compile(block._forward, fullgraph=True)
    if zero_stage == 3:
        set_z3_leaf_modules(model, list({type(block) for block in model.blocks}))
    return len(model.blocks)

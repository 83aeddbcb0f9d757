"""The DeepSpeed engine: our config sections -> a DeepSpeed config dict -> deepspeed.initialize.

DeepSpeed owns the optimizer (AdamW, or Adam + L2 when optim.decoupled is false), ZeRO sharding, gradient
accumulation, clipping, bf16 and the checkpoint format. We hand it the role-based param groups (each with its
own weight_decay, which the train loop sets every step from the decay schedule, optim/decay.py) and the LR
schedule.
"""

from __future__ import annotations

import logging
import os
import re
from functools import partial

import torch
from torch import nn

from megarank.config.schema import ExperimentConfig
from megarank.errors import MegarankError
from megarank.optim.groups import build_param_groups, describe_groups
from megarank.optim.schedule import warmup_cosine


def use_bf16(cfg: ExperimentConfig, device: torch.device) -> bool:
    if cfg.train.precision == "auto":
        return device.type == "cuda"
    return cfg.train.precision == "bf16"


def deepspeed_config(cfg: ExperimentConfig, *, grad_accum: int, device: torch.device,
                     load_universal: bool = False) -> dict:
    """The DeepSpeed JSON config for this experiment (saved beside the run for reference)."""
    optim = cfg.optim
    if optim.implementation == "fused" and device.type != "cuda":
        raise MegarankError("optim.implementation=fused needs a CUDA GPU (DeepSpeed's FusedAdam); use auto or torch")
    torch_adam = optim.implementation == "torch" or (optim.implementation == "auto" and device.type != "cuda")
    return {
        "train_batch_size": cfg.train.global_batch,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": optim.grad_clip,
        "optimizer": {
            "type": "AdamW" if optim.decoupled else "Adam",
            "params": {
                "lr": optim.lr,
                "betas": [optim.beta1, optim.beta2],
                "eps": optim.eps,
                "weight_decay": 0.0,  # every group carries its own (optim/groups.py)
                # adam_w_mode false makes DeepSpeed's Adam add wd * w to the gradient (L2) instead of decaying
                "adam_w_mode": optim.decoupled,
                "torch_adam": torch_adam,
            },
        },
        "zero_optimization": {"stage": cfg.zero.stage},
        "bf16": {"enabled": use_bf16(cfg, device)},
        # a checkpoint from another data-parallel size is read in DeepSpeed's universal form
        "checkpoint": {"load_universal": load_universal},
        "steps_per_print": 10**12,  # megarank logs for itself
        "wall_clock_breakdown": False,
    }


def arch_list_deepspeed_can_parse() -> None:
    """Make TORCH_CUDA_ARCH_LIST readable by DeepSpeed's JIT builder (0.19), which reads each entry as numbers:
    NGC-style images list arch-specific entries such as '9.0a', and FusedAdam's build then fails with a
    ValueError. Such a list is replaced, for this process, by the local GPUs' own capabilities — what DeepSpeed
    builds for when the variable is unset (FusedAdam uses nothing arch-specific)."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if re.search(r"\d\.\d+[a-z]", archs) and torch.cuda.is_available():
        local = {"{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())}
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(sorted(local))


def build_engine(model: nn.Module, cfg: ExperimentConfig, *, grad_accum: int, device: torch.device, mpu=None,
                 load_universal: bool = False):
    """deepspeed.initialize with role-based decay groups; returns (engine, description of the groups).

    The description is taken before DeepSpeed sees the groups: ZeRO flattens each group's tensors in place."""
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    arch_list_deepspeed_can_parse()
    groups = build_param_groups(model, cfg.optim)
    description = describe_groups(groups, cfg.optim)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        lr_scheduler=partial(warmup_cosine, cfg=cfg.optim, total_steps=cfg.train.max_steps),
        config=deepspeed_config(cfg, grad_accum=grad_accum, device=device, load_universal=load_universal),
        mpu=mpu,
    )
    return engine, description


def optimizer_groups(engine) -> list[dict]:
    """The param groups of the optimizer DeepSpeed steps, each with its 'name', 'lr' and 'weight_decay': the
    ones the LR scheduler sets (DeepSpeed builds it on its basic optimizer, which ZeRO 1-3 and the bf16 wrapper
    step with each group's hyper-parameters beside the flat partitions)."""
    return engine.lr_scheduler.optimizer.param_groups

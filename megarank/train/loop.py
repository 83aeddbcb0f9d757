"""The training run, top to bottom: check config -> process group -> data -> model -> DeepSpeed engine ->
resume -> steps (log, validate, checkpoint, preemption) -> final checkpoint.

Everything that can reject the user's input runs before the run directory is touched.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from megarank.config import ExperimentConfig, gradient_accumulation_steps, to_yaml, validate
from megarank.errors import MegarankError
from megarank.models.gpt import GPT
from megarank.parallel.layout import DeepSpeedMPU, build_layout
from megarank.parallel.tensor_parallel import parallelize
from megarank.train import checkpoint
from megarank.train.batches import micro_batch, open_text_data, val_batch
from megarank.train.distributed import World, init_distributed
from megarank.train.engine import build_engine, deepspeed_config
from megarank.train.metrics import MetricsLogger
from megarank.train.preemption import PreemptionHandler
from megarank.train.throughput import mfu, train_flops_per_token

log = logging.getLogger("megarank")


def train(cfg: ExperimentConfig) -> dict:
    """Run (or resume) the experiment; returns the last logged record."""
    world = init_distributed()
    validate(cfg, world.world_size)
    layout = build_layout(cfg.parallel.tp)
    grad_accum = gradient_accumulation_steps(cfg, world.world_size)
    run_dir, ckpt_dir = Path(cfg.train.run_dir), Path(cfg.checkpoint.dir)
    resume_from = checkpoint.resolve_resume(cfg.train.resume, ckpt_dir)
    universal = resume_from is not None and checkpoint.needs_universal(resume_from, layout.tp_size, layout.dp_size,
                                                                       cfg.zero.stage)

    data = open_text_data(cfg.data, seq_len=cfg.model.seq_len, seed=cfg.seed, show_progress=world.is_main)
    set_vocab_size(cfg, data.vocab_size)

    torch.manual_seed(cfg.seed)  # same full init on every rank; TP ranks then keep their slices
    model = GPT(cfg.model)
    tp_rng = parallelize(model, layout, seed=cfg.seed, device=world.device)
    model.to(world.device)
    engine, group_table = build_engine(model, cfg, grad_accum=grad_accum, device=world.device,
                                       mpu=DeepSpeedMPU(layout), load_universal=universal)

    step = 0
    if resume_from is not None:
        state = checkpoint.load_checkpoint(engine, resume_from, tp_rng, universal=universal)
        step = state["step"]
        data.sampler.check_state(state["sampler"])
    if world.is_main:
        _write_run_files(run_dir, cfg, grad_accum, world)
        log.info("data: %s, %d training sequences of %d tokens", data.source, data.train.num_sequences,
                 cfg.model.seq_len)
        log.info("model: %.2fM parameters; weight-decay groups:\n%s", model.num_params() / 1e6,
                 group_table)
        if resume_from is not None:
            log.info("resumed from %s at step %d%s", resume_from, step,
                     " (re-sharded through a universal checkpoint)" if universal else "")

    metrics = MetricsLogger(run_dir, enabled=world.is_main, start_step=step)
    preemption = PreemptionHandler()
    flops_per_token = train_flops_per_token(cfg.model)
    tokens_per_step = cfg.train.global_batch * cfg.model.seq_len
    universal_info = checkpoint.universal_checkpoint_info(engine.module, cfg.model.vocab_size)
    meta = {"layout": layout.describe(), "zero_stage": cfg.zero.stage, "config": to_yaml(cfg)}
    last: dict = {}
    last_saved = step if resume_from is not None else None
    bar = tqdm(total=cfg.train.max_steps, initial=step, disable=not (world.is_main and cfg.train.progress),
               desc="train", dynamic_ncols=True)
    while step < cfg.train.max_steps:
        t0 = time.perf_counter()
        lr = engine.get_lr()[0]  # the rate this step uses; the scheduler advances inside engine.step()
        loss_sum = torch.zeros((), device=world.device)
        for micro_step in range(grad_accum):
            x, y = micro_batch(data, step=step, micro_step=micro_step, dp_rank=layout.dp_rank,
                               dp_size=layout.dp_size, micro_batch=cfg.train.micro_batch,
                               global_batch=cfg.train.global_batch, device=world.device)
            loss = engine(x, y)
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach().float()
        # mean over the whole global batch: accumulation steps here, data-parallel ranks by all-reduce
        dist.all_reduce(loss_sum, group=layout.dp_group)
        step += 1
        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            loss_value = loss_sum.item() / (grad_accum * layout.dp_size)
            seconds = time.perf_counter() - t0
            last = {"step": step, "loss": loss_value, "lr": lr,
                    "grad_norm": _as_float(engine.get_global_grad_norm()),
                    "tokens_per_s": tokens_per_step / seconds, "step_time_s": seconds}
            if world.device.type == "cuda":
                last["mfu"] = mfu(flops_per_token * tokens_per_step / seconds / world.world_size, world.device)
            metrics.log(last)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{last['lr']:.2e}")
        bar.update(1)

        if data.val is not None and cfg.train.eval_every and (
                step % cfg.train.eval_every == 0 or step == cfg.train.max_steps):
            val_loss = evaluate(engine, data, cfg, layout, world)
            record = {"step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
            metrics.log(record)
            last = {**last, **record}
        stop = preemption.should_stop(world.device)
        periodic = cfg.checkpoint.every and step % cfg.checkpoint.every == 0
        if periodic or stop or step == cfg.train.max_steps:
            client = {"megarank": {"step": step, "sampler": data.sampler.state_dict(step * cfg.train.global_batch)},
                      **universal_info}
            if last_saved != step:
                checkpoint.save_checkpoint(engine, ckpt_dir, step, client, meta, tp_rng)
                last_saved = step
        if stop:
            if world.is_main:
                log.warning("preempted: saved step %d, exiting", step)
            break
    bar.close()
    metrics.close()
    return last


def set_vocab_size(cfg: ExperimentConfig, data_vocab: int) -> None:
    """Fill model.vocab_size from the data (padded to vocab_multiple) or check the configured one."""
    model = cfg.model
    if model.vocab_size is None:
        model.vocab_size = -(-data_vocab // model.vocab_multiple) * model.vocab_multiple
    elif model.vocab_size < data_vocab:
        raise MegarankError(f"model.vocab_size={model.vocab_size} is smaller than the data's tokenizer "
                            f"({data_vocab}); unset model.vocab_size to take it from the data")
    if model.vocab_size % cfg.parallel.tp:
        raise MegarankError(f"model.vocab_size={model.vocab_size} is not divisible by parallel.tp="
                            f"{cfg.parallel.tp}; make model.vocab_multiple a multiple of tp")


@torch.no_grad()
def evaluate(engine, data, cfg: ExperimentConfig, layout, world: World) -> float:
    """Mean validation loss over eval_batches micro batches per data-parallel rank."""
    engine.eval()
    total = torch.zeros((), device=world.device)
    for index in range(cfg.train.eval_batches):
        x, y = val_batch(data, index=index, dp_rank=layout.dp_rank, dp_size=layout.dp_size,
                         micro_batch=cfg.train.micro_batch, device=world.device)
        total += engine(x, y).float()
    dist.all_reduce(total, group=layout.dp_group)
    engine.train()
    return total.item() / (cfg.train.eval_batches * layout.dp_size)


def _write_run_files(run_dir: Path, cfg: ExperimentConfig, grad_accum: int, world: World) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    ds = deepspeed_config(cfg, grad_accum=grad_accum, device=world.device)
    (run_dir / "deepspeed_config.json").write_text(json.dumps(ds, indent=2))


def _as_float(value) -> float:
    if value is None:
        return float("nan")
    return float(value.item() if torch.is_tensor(value) else value)


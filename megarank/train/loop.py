"""The training run, top to bottom: check config -> process group -> task (data + model family) -> resume
checks -> model -> tensor parallelism -> DeepSpeed engine -> resume -> steps (divergence guard, log, loss
spikes, validate, attention rank and group weight norms, checkpoint, preemption) -> final checkpoint.

Everything that can reject the user's input runs before the run directory is touched. The data position is
the number of samples consumed (saved in the checkpoint), not step × global_batch, so a resume with another
train.global_batch continues exactly where the data stopped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from megarank.config import ExperimentConfig, gradient_accumulation_steps, to_yaml, validate
from megarank.optim.schedule import follow_configured_peak
from megarank.parallel.activation_checkpointing import apply_activation_checkpointing
from megarank.parallel.compile import compile_blocks
from megarank.parallel.layout import DeepSpeedMPU, build_layout
from megarank.parallel.tensor_parallel import parallelize
from megarank.train import checkpoint
from megarank.train.tasks import build_task
from megarank.train.distributed import World, init_distributed
from megarank.train.divergence import LossSpikeDetector, divergence_error, step_diverged
from megarank.train.failures import setup_checked_on_every_rank
from megarank.train.engine import build_engine, deepspeed_config
from megarank.train.grad_norm import engine_reports_grad_norm, gradient_norm
from megarank.train.metrics import MetricsLogger
from megarank.train.preemption import PreemptionHandler
from megarank.train.rank_logging import attention_rank_record
from megarank.train.resume_checks import check_resume
from megarank.train.throughput import mfu
from megarank.train.weight_norms import weight_norm_record

log = logging.getLogger("megarank")


def train(cfg: ExperimentConfig) -> dict:
    """Run (or resume) the experiment; returns the last logged record."""
    world = init_distributed(cfg.parallel.timeout_minutes)
    # a bad path on any one rank (data or checkpoint missing on one node) stops every rank here, not in a collective
    with setup_checked_on_every_rank():
        validate(cfg, world.world_size)
        layout = build_layout(cfg.parallel.tp)  # collective, but every rank gets here: validate reads only the config
        grad_accum = gradient_accumulation_steps(cfg, world.world_size)
        run_dir, ckpt_dir = Path(cfg.train.run_dir), Path(cfg.checkpoint.dir)
        resume_from = checkpoint.resolve_resume(cfg.train.resume, ckpt_dir)
        universal = resume_from is not None and checkpoint.needs_universal(resume_from, layout.tp_size,
                                                                           layout.dp_size, cfg.zero.stage)

        task = build_task(cfg, layout, world.device, is_main=world.is_main)
        if resume_from is not None:
            check_resume(resume_from, cfg, task.data_identity)

    torch.manual_seed(cfg.seed)  # same full init on every rank; TP ranks then keep their slices
    model = task.build_model()
    tp_rng = parallelize(model, layout, seed=cfg.seed, device=world.device)
    recomputed = apply_activation_checkpointing(model, cfg.train.activation_checkpointing,
                                                cfg.train.activation_checkpointing_every, tp_rng)
    if recomputed and world.is_main:
        log.info("activation checkpointing (%s): blocks %s recompute their forward in backward",
                 cfg.train.activation_checkpointing, ", ".join(map(str, recomputed)))
    if cfg.train.compile:
        compiled = compile_blocks(model, cfg.zero.stage)
        if world.is_main:
            log.info("torch.compile: %d blocks (compiled at their first step)", compiled)
    model.to(world.device)
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them away
    engine, group_table = build_engine(model, cfg, grad_accum=grad_accum, device=world.device,
                                       mpu=DeepSpeedMPU(layout), load_universal=universal)
    own_grad_norm = not engine_reports_grad_norm(engine)

    step, consumed_samples = 0, 0
    if resume_from is not None:
        state = checkpoint.load_checkpoint(engine, resume_from, tp_rng, universal=universal)
        step = state["step"]
        consumed_samples = task.sampler.check_state(state["sampler"])
        follow_configured_peak(engine.lr_scheduler, cfg.optim)  # a lowered optim.lr applies from here on
    if world.is_main:
        _write_run_files(run_dir, cfg, grad_accum, world)
        log.info("data: %s", task.description)
        log.info("model: %.2fM parameters%s; weight-decay groups:\n%s", n_params / 1e6,
                 " per TP rank" if layout.tp_size > 1 else "", group_table)
        if resume_from is not None:
            log.info("resumed from %s at step %d, %d samples consumed%s", resume_from, step, consumed_samples,
                     " (re-sharded through a universal checkpoint)" if universal else "")

    metrics = MetricsLogger(run_dir, enabled=world.is_main, start_step=step)
    preemption = PreemptionHandler()
    spikes = LossSpikeDetector(cfg.train.spike_factor, cfg.train.spike_window)
    items_per_step = cfg.train.global_batch * task.items_per_sample
    throughput_key = "tokens_per_s" if task.items_per_sample > 1 else "samples_per_s"
    universal_info = checkpoint.universal_checkpoint_info(engine.module, cfg.model.vocab_size)
    meta = {"layout": layout.describe(), "zero_stage": cfg.zero.stage, "config": to_yaml(cfg),
            "data": task.data_identity}
    last: dict = {}
    last_saved = step if resume_from is not None else None
    bar = tqdm(total=cfg.train.max_steps, initial=step, disable=not (world.is_main and cfg.train.progress),
               desc="train", dynamic_ncols=True)
    batches = task.train_batches(consumed_samples)
    try:
        while step < cfg.train.max_steps:
            t0 = time.perf_counter()
            lr = engine.get_lr()[0]  # the rate this step uses; the scheduler advances inside engine.step()
            loss_sum = torch.zeros((), device=world.device)
            for micro_step in range(grad_accum):
                x, y = next(batches)
                loss = engine(x, y)
                engine.backward(loss)
                if own_grad_norm and micro_step == grad_accum - 1:  # ZeRO-0: engine.step() frees the gradients
                    grad_norm = gradient_norm(engine.module, layout)
                engine.step()
                loss_sum += loss.detach().float()
            # mean over the whole global batch: accumulation steps here, data-parallel ranks by all-reduce
            dist.all_reduce(loss_sum, group=layout.dp_group)
            if not own_grad_norm:
                grad_norm = _as_float(engine.get_global_grad_norm())
            step += 1
            consumed_samples += cfg.train.global_batch
            loss_value = loss_sum.item() / (grad_accum * layout.dp_size)
            # every step, not only logged ones: a diverged step must never reach the checkpoint below
            diverged = step_diverged(loss_value, grad_norm, world.device)
            if diverged or step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                seconds = time.perf_counter() - t0
                last = {"step": step, "consumed_samples": consumed_samples, "loss": loss_value, "lr": lr,
                        "grad_norm": grad_norm, throughput_key: items_per_step / seconds, "step_time_s": seconds}
                if world.device.type == "cuda":
                    last["mfu"] = mfu(task.flops_per_item * items_per_step / seconds / world.world_size,
                                      world.device)
                    last["peak_mem_gb"] = torch.cuda.max_memory_allocated(world.device) / 2**30
                metrics.log(last)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{last['lr']:.2e}")
            if diverged:
                raise divergence_error(step, loss_value, grad_norm,
                                       checkpoint.tag_for(last_saved) if last_saved is not None else None)
            running_mean = spikes.check(loss_value)
            if running_mean is not None:
                metrics.log({"step": step, "warning": "loss_spike", "spike_loss": loss_value,
                             "spike_running_mean": running_mean})
                if world.is_main:
                    log.warning("step %d: loss spike, %.4g is over %g × the mean of the last %d steps (%.4g); "
                                "training on", step, loss_value, cfg.train.spike_factor, cfg.train.spike_window,
                                running_mean)
            bar.update(1)

            if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == cfg.train.max_steps):
                engine.eval()
                record = task.evaluate(engine)
                engine.train()
                if record:
                    metrics.log({"step": step, **record})
                    last = {**last, **record}
            if cfg.analysis.every and (step % cfg.analysis.every == 0 or step == cfg.train.max_steps):
                partitioned = cfg.zero.stage == 3
                record = attention_rank_record(engine.module, cfg.analysis, n_heads=cfg.model.n_heads,
                                               partitioned=partitioned, layout=layout, device=world.device)
                record |= weight_norm_record(engine.module, cfg.optim, partitioned=partitioned, layout=layout,
                                             device=world.device)
                metrics.log({"step": step, **record})
                last = {**last, **record}
            stop = preemption.should_stop(world.device)
            periodic = cfg.checkpoint.every and step % cfg.checkpoint.every == 0
            if periodic or stop or step == cfg.train.max_steps:
                client = {"megarank": {"step": step, "sampler": task.sampler.state_dict(consumed_samples)},
                          **universal_info}
                if last_saved != step:
                    checkpoint.save_checkpoint(engine, ckpt_dir, step, client, meta, tp_rng, retention=cfg.checkpoint)
                    last_saved = step
            if stop:
                if world.is_main:
                    log.warning("preempted: saved step %d, exiting", step)
                break
    finally:  # a diverged run still flushes its records, the diverged step's included, to TensorBoard
        bar.close()
        metrics.close()
    return last


def _write_run_files(run_dir: Path, cfg: ExperimentConfig, grad_accum: int, world: World) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    ds = deepspeed_config(cfg, grad_accum=grad_accum, device=world.device)
    (run_dir / "deepspeed_config.json").write_text(json.dumps(ds, indent=2))


def _as_float(value) -> float:
    if value is None:
        return float("nan")
    return float(value.item() if torch.is_tensor(value) else value)


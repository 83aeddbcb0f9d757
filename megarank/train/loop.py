"""The training run: setup(), then for each step train_step() -> log, loss-spike watch -> validation ->
attention rank and group weight norms -> checkpoint, until max_steps, a divergence (stops before saving) or a
preemption (stops after saving).

setup() runs, in order: find the checkpoint to resume from -> train.init_from's model keys -> open the data ->
resolve the config against it, freeze it and validate it at this world size -> resume checks -> process layout
-> task -> model (train.init_from's weights loaded whole) -> parallelize (TP, activation checkpointing,
compile) -> DeepSpeed engine -> resume. Everything that can reject the user's input runs before the run
directory is touched, and on every rank at once (train/failures.py).

Weight decay: before every optimizer step each group's decay is set from the decay schedule (optim/decay.py),
logged as wd/<group> in the step's record and recorded in each checkpoint's marker as the decay in effect. A
resume applies this run's decay from its step on; where it differs from what the checkpoint's config would have
applied, a warning and a 'decay_changed' record in metrics.jsonl say so.

The data position is the number of samples consumed (saved in the checkpoint), not step × global_batch, so a
resume with another train.global_batch continues exactly where the data stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from megarank.ckpt.marker import Marker
from megarank.config import (ExperimentConfig, data_parallel_size, frozen, gradient_accumulation_steps, resolve,
                             to_yaml, validate)
from megarank.data.training_data import open_training_data
from megarank.hf.init_from import InitSource
from megarank.optim.decay import apply_decay, decay_at
from megarank.optim.groups import group_layout
from megarank.optim.schedule import follow_configured_peak
from megarank.parallel.layout import DeepSpeedMPU, ParallelLayout, build_layout
from megarank.parallel.parallelize import parallelize
from megarank.parallel.random import TPRandomState
from megarank.train import checkpoint
from megarank.train.distributed import World, init_distributed
from megarank.train.divergence import LossSpikeDetector, divergence_error
from megarank.train.engine import build_engine, deepspeed_config, optimizer_groups
from megarank.train.failures import setup_checked_on_every_rank
from megarank.train.grad_norm import engine_reports_grad_norm, gradient_norm
from megarank.train.metrics import MetricsLogger
from megarank.train.preemption import PreemptionHandler
from megarank.train.rank_logging import attention_rank_record
from megarank.train.resume_checks import check_resume
from megarank.train.step_sync import agree_on_step
from megarank.train.tasks import Batch, Task, task_for
from megarank.train.throughput import mfu
from megarank.train.weight_norms import weight_norm_record

log = logging.getLogger("megarank")


@dataclass
class Run:
    """What setup() built, for the steps to use."""

    cfg: ExperimentConfig
    """Resolved against the data, validated and frozen."""
    world: World
    layout: ParallelLayout
    task: Task
    engine: Any
    """The DeepSpeed engine around the parallelized model."""
    tp_rng: TPRandomState
    grad_accum: int
    own_grad_norm: bool
    """ZeRO-0 in fp32: DeepSpeed keeps no gradient norm, the step computes it (train/grad_norm.py)."""
    resumed_from: Path | None
    step: int
    """Optimizer steps done before this attempt (the resumed checkpoint's, or 0)."""
    consumed_samples: int
    """Sampler positions consumed before this attempt."""
    meta: dict
    """What every checkpoint's completion marker records besides the step and the decay in effect: layout,
    config, data identity, the decay groups."""
    decay_changed: dict[str, tuple[float, float]]
    """{group: (the decay the checkpoint's config gives at the resume step, this run's)} where they differ; {}
    for a fresh run."""


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Mean over the global batch."""
    grad_norm: float
    lr: float
    """The rate this step used."""
    decay: dict[str, float]
    """{group: the weight decay this step used}."""
    seconds: float
    diverged: bool
    stop: bool


def train(cfg: ExperimentConfig) -> dict:
    """Run (or resume) the experiment; returns the last logged record."""
    world = init_distributed(cfg.parallel.timeout_minutes)
    run = setup(cfg, world)
    cfg, task = run.cfg, run.task
    step, consumed_samples = run.step, run.consumed_samples
    last_saved = step if run.resumed_from is not None else None
    metrics = MetricsLogger(Path(cfg.train.run_dir), enabled=world.is_main, start_step=step)
    if step == 0:  # the run's data size, for the decay timescales in epochs (optim/timescales.py)
        metrics.log({"step": 0, "train_samples": task.sampler.num_sequences,
                     "steps_per_epoch": task.sampler.num_sequences / cfg.train.global_batch})
    if run.decay_changed:
        metrics.log({"step": step, "event": "decay_changed",
                     **{f"wd_before/{g}": before for g, (before, _) in run.decay_changed.items()},
                     **{f"wd_after/{g}": after for g, (_, after) in run.decay_changed.items()}})
    preemption = PreemptionHandler()
    spikes = LossSpikeDetector(cfg.train.spike_factor, cfg.train.spike_window)
    client_extra = checkpoint.universal_checkpoint_info(run.engine.module, cfg.model.vocab_size)
    last: dict = {}
    bar = tqdm(total=cfg.train.max_steps, initial=step, disable=not (world.is_main and cfg.train.progress),
               desc="train", dynamic_ncols=True)
    batches = task.train_batches(consumed_samples)
    try:
        while step < cfg.train.max_steps:
            result = train_step(run, batches, preemption, step)
            step += 1
            consumed_samples += cfg.train.global_batch
            final = step == cfg.train.max_steps

            # every step, not only logged ones: a diverged step must never reach the checkpoint below
            if result.diverged or step % cfg.train.log_every == 0 or final:
                last = step_record(run, result, step, consumed_samples)
                metrics.log(last)
                bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}")
            if result.diverged:
                raise divergence_error(step, result.loss, result.grad_norm,
                                       checkpoint.tag_for(last_saved) if last_saved is not None else None)
            _watch_for_spike(spikes, result.loss, step, metrics, cfg, world)
            bar.update(1)

            if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or final):
                run.engine.eval()
                record = task.evaluate(run.engine)
                run.engine.train()
                if record:
                    metrics.log({"step": step, **record})
                    last = {**last, **record}
            if cfg.analysis.every and (step % cfg.analysis.every == 0 or final):
                record = analysis_record(run)
                metrics.log({"step": step, **record})
                last = {**last, **record}
            periodic = cfg.checkpoint.every and step % cfg.checkpoint.every == 0
            if (periodic or result.stop or final) and last_saved != step:
                client = {"megarank": {"step": step, "sampler": task.sampler.state_dict(consumed_samples)},
                          **client_extra}
                meta = {**run.meta, "decay": result.decay}  # the decay in effect: the last step's
                checkpoint.save_checkpoint(run.engine, Path(cfg.checkpoint.dir), step, client, meta, run.tp_rng,
                                           retention=cfg.checkpoint)
                last_saved = step
            if result.stop:
                if world.is_main:
                    log.warning("preempted: saved step %d, exiting", step)
                break
    finally:  # a diverged run still flushes its records, the diverged step's included, to TensorBoard
        bar.close()
        metrics.close()
    return last


def setup(cfg: ExperimentConfig, world: World) -> Run:
    """Everything before the first step; see the module docstring for the order."""
    # a bad path on any one rank (data or checkpoint missing on one node) stops every rank here, not in a collective
    with setup_checked_on_every_rank():
        # collective (rank 0 decides for all): first, before any check that can fail on one rank alone
        resume_from = checkpoint.resolve_resume(cfg.train.resume, Path(cfg.checkpoint.dir))
        # train.init_from: the model section from the source now, its weights (unless resuming) read below
        init = InitSource.open(cfg.train.init_from) if cfg.train.init_from else None
        if init is not None:
            cfg = init.configure(cfg)
        data = open_training_data(cfg.data, cfg.model, seed=cfg.seed, show_progress=world.is_main)
        cfg = frozen(resolve(cfg, data.info))  # from here on nothing changes the config
        validate(cfg, world.world_size)
        grad_accum = gradient_accumulation_steps(cfg, world.world_size)
        universal = resume_from is not None and checkpoint.needs_universal(
            resume_from, cfg.parallel.tp, data_parallel_size(cfg, world.world_size), cfg.zero.stage)
        if resume_from is not None:
            check_resume(resume_from, cfg, data.identity)
        if init is not None:
            init.check_data(data.identity)
        init_state = init.read_weights(cfg.model) if init is not None and resume_from is None else None
    layout = build_layout(cfg.parallel.tp)  # collective: every rank passed the checks above
    task = task_for(data, cfg.model, cfg.train, layout, world.device)

    torch.manual_seed(cfg.seed)  # same full init on every rank; TP ranks then keep their slices
    model = task.build_model()
    if init_state is not None:  # whole weights, before TP slices them and ZeRO-3 partitions them
        model.load_state_dict(init_state)
    tp_rng = parallelize(model, layout, cfg.train, cfg.zero.stage, seed=cfg.seed, device=world.device)
    model.to(world.device)
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them away
    engine, group_table = build_engine(model, cfg, grad_accum=grad_accum, device=world.device,
                                       mpu=DeepSpeedMPU(layout), load_universal=universal)

    step, consumed_samples, decay_changed = 0, 0, {}
    if resume_from is not None:
        state = checkpoint.load_checkpoint(engine, resume_from, tp_rng, universal=universal)
        step = state["step"]
        consumed_samples = task.sampler.check_state(state["sampler"])
        follow_configured_peak(engine.lr_scheduler, cfg.optim)  # a lowered optim.lr applies from here on
        decay_changed = _decay_changes(resume_from, cfg, step)  # a changed decay applies from here on too
    if world.is_main:
        _write_run_files(Path(cfg.train.run_dir), cfg, grad_accum, world)
        log.info("data: %s", task.description)
        log.info("model: %.2fM parameters%s; weight-decay groups:\n%s", n_params / 1e6,
                 " per TP rank" if layout.tp_size > 1 else "", group_table)
        if init is not None:
            log.info("%s %s", "model section from" if resume_from is not None else "weights initialised from",
                     init.path)
        if resume_from is not None:
            log.info("resumed from %s at step %d, %d samples consumed%s", resume_from, step, consumed_samples,
                     " (re-sharded through a universal checkpoint)" if universal else "")
        if decay_changed:
            log.warning("weight decay changed on resume, from step %d on: %s", step,
                        ", ".join(f"{g} {before:g} -> {after:g}" for g, (before, after) in decay_changed.items()))
    meta = {"layout": layout.describe(), "zero_stage": cfg.zero.stage, "config": to_yaml(cfg),
            "data": data.identity, "decay_groups": [g["name"] for g in optimizer_groups(engine)]}
    return Run(cfg=cfg, world=world, layout=layout, task=task, engine=engine, tp_rng=tp_rng, grad_accum=grad_accum,
               own_grad_norm=not engine_reports_grad_norm(engine), resumed_from=resume_from, step=step,
               consumed_samples=consumed_samples, meta=meta, decay_changed=decay_changed)


def _decay_changes(tag_dir: Path, cfg: ExperimentConfig, step: int) -> dict[str, tuple[float, float]]:
    """{group: (before, after)} where this run's decay at `step` differs from what the checkpoint's own config
    (its optim section and max_steps) gives there. The group layout is the same (train/resume_checks.py)."""
    marker = Marker.read(tag_dir)
    saved, saved_steps = marker.optim_config(), int(marker.section("train").get("max_steps", cfg.train.max_steps))
    changes = {}
    for group in group_layout(cfg.optim):
        before = decay_at(group, step, saved, saved_steps)
        after = decay_at(group, step, cfg.optim, cfg.train.max_steps)
        if before != after:
            changes[group] = (before, after)
    return changes


def train_step(run: Run, batches: Iterator[Batch], preemption: PreemptionHandler, step: int) -> StepResult:
    """One optimizer step over the global batch (`step` optimizer steps already taken), then the step's one
    all-reduce (train/step_sync.py), after which every rank knows the loss, whether the step diverged and
    whether any rank was asked to stop."""
    engine, start = run.engine, time.perf_counter()
    decay = apply_decay(optimizer_groups(engine), run.cfg.optim, step, run.cfg.train.max_steps)
    lr = engine.get_lr()[0]  # the rate this step uses; the scheduler advances inside engine.step()
    loss_sum = torch.zeros((), device=run.world.device)
    for micro_step in range(run.grad_accum):
        x, y = next(batches)
        loss = engine(x, y)
        engine.backward(loss)
        if run.own_grad_norm and micro_step == run.grad_accum - 1:  # ZeRO-0: engine.step() frees the gradients
            grad_norm = gradient_norm(engine.module, run.layout)
        engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary only
        loss_sum += loss.detach().float()
    if not run.own_grad_norm:
        grad_norm = _as_float(engine.get_global_grad_norm())
    # mean over the whole global batch: accumulation steps here, data-parallel ranks in the one all-reduce
    agreed = agree_on_step(loss_sum, grad_norm, preemption.requested, layout=run.layout, grad_accum=run.grad_accum)
    return StepResult(loss=agreed.loss, grad_norm=grad_norm, lr=lr, decay=decay,
                      seconds=time.perf_counter() - start, diverged=agreed.diverged, stop=agreed.stop)


def step_record(run: Run, result: StepResult, step: int, consumed_samples: int) -> dict:
    """The metrics.jsonl record of a training step."""
    items = run.cfg.train.global_batch * run.task.items_per_sample
    throughput_key = "tokens_per_s" if run.task.items_per_sample > 1 else "samples_per_s"
    record = {"step": step, "consumed_samples": consumed_samples, "loss": result.loss, "lr": result.lr,
              "grad_norm": result.grad_norm, **{f"wd/{g}": wd for g, wd in result.decay.items() if g != "no_decay"},
              throughput_key: items / result.seconds, "step_time_s": result.seconds}
    device = run.world.device
    if device.type == "cuda":
        record["mfu"] = mfu(run.task.flops_per_item * items / result.seconds / run.world.world_size, device)
        record["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return record


def analysis_record(run: Run) -> dict:
    """Mean attention rank per layer and the weight norm of each decay group (a collective)."""
    cfg, partitioned = run.cfg, run.cfg.zero.stage == 3
    record = attention_rank_record(run.engine.module, cfg.analysis, n_heads=cfg.model.n_heads,
                                   partitioned=partitioned, layout=run.layout, device=run.world.device)
    return record | weight_norm_record(run.engine.module, cfg.optim, partitioned=partitioned, layout=run.layout,
                                       device=run.world.device)


def _watch_for_spike(spikes: LossSpikeDetector, loss: float, step: int, metrics: MetricsLogger,
                     cfg: ExperimentConfig, world: World) -> None:
    running_mean = spikes.check(loss)
    if running_mean is None:
        return
    metrics.log({"step": step, "warning": "loss_spike", "spike_loss": loss, "spike_running_mean": running_mean})
    if world.is_main:
        log.warning("step %d: loss spike, %.4g is over %g × the mean of the last %d steps (%.4g); training on",
                    step, loss, cfg.train.spike_factor, cfg.train.spike_window, running_mean)


def _write_run_files(run_dir: Path, cfg: ExperimentConfig, grad_accum: int, world: World) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    ds = deepspeed_config(cfg, grad_accum=grad_accum, device=world.device)
    (run_dir / "deepspeed_config.json").write_text(json.dumps(ds, indent=2))


def _as_float(value) -> float:
    if value is None:
        return float("nan")
    return float(value.item() if torch.is_tensor(value) else value)

"""What the loop trains: a Task bundles one model family's data, model and validation behind one interface.

    TextTask  — GPT on token shards; validation: val_loss, val_ppl
    ImageTask — ViT on images;      validation: val_loss, val_acc (top-1, a fraction)

A task is built on data already opened (data/training_data.py) and on the model section already resolved
against it (config/resolve.py): it reads its own sections, the model and the training loop's, never the whole
config, and changes neither.

Both deal each global batch — the next global_batch sampler positions after the samples consumed so far — to
(micro step, data-parallel rank) slots in the same way (data/batches.py), so the logged global-batch loss is the
same at any layout and a resume replays exactly what a straight run would have seen. Validation covers a fixed
set, the first eval_batches × global_batch validation items, shared out over the data-parallel ranks with sums
(not means) reduced, so val_loss too is the same at any layout for the same weights.
"""

from __future__ import annotations

import math
from itertools import count
from typing import Iterator, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from megarank.config import ExperimentConfig, ModelConfig, TrainConfig, frozen, resolve
from megarank.data.batches import micro_batch, sample_start, validation_shard
from megarank.data.sampler import ResumableSampler
from megarank.data.training_data import ImageData, TextData, open_training_data
from megarank.models.gpt import GPT
from megarank.models.vit import ViT
from megarank.parallel.layout import ParallelLayout
from megarank.train.throughput import train_flops_per_token

Batch = tuple[torch.Tensor, torch.Tensor]


class Task(Protocol):
    sampler: ResumableSampler
    description: str
    items_per_sample: int
    """Tokens per sequence (text) or 1 (images): what tokens_per_s counts."""
    flops_per_item: float

    def build_model(self) -> nn.Module: ...

    def train_batches(self, consumed_samples: int) -> Iterator[Batch]:
        """This rank's micro batches from sampler position consumed_samples on, in (step, micro step) order."""

    def evaluate(self, engine) -> dict[str, float]:
        """Validation metrics over a fixed set of validation items, the same at any layout for the same weights
        (a collective over the data-parallel group)."""


class TextTask:
    def __init__(self, data: TextData, model: ModelConfig, train: TrainConfig, layout: ParallelLayout,
                 device: torch.device):
        self.data, self.model_cfg, self.train_cfg, self.layout, self.device = data, model, train, layout, device
        self.sampler = data.sampler
        self.description = f"{data.source}, {data.train.num_sequences} training sequences of {model.seq_len} tokens"
        self.items_per_sample = model.seq_len
        self.flops_per_item = train_flops_per_token(model)

    def build_model(self) -> nn.Module:
        return GPT(self.model_cfg)

    def train_batches(self, consumed_samples: int) -> Iterator[Batch]:
        t, layout = self.train_cfg, self.layout
        for batch_start in count(consumed_samples, t.global_batch):
            for micro_step in range(t.global_batch // (t.micro_batch * layout.dp_size)):
                yield micro_batch(self.data, batch_start=batch_start, micro_step=micro_step, dp_rank=layout.dp_rank,
                                  dp_size=layout.dp_size, micro_batch=t.micro_batch, device=self.device)

    def evaluate(self, engine) -> dict[str, float]:
        if self.data.val is None:
            return {}
        sums = self.validation_sums(engine)
        dist.all_reduce(sums, group=self.layout.dp_group)  # sums, not a mean of rank means: the same at any dp
        loss = (sums[0] / sums[1]).item()
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    @torch.no_grad()
    def validation_sums(self, engine) -> torch.Tensor:
        """(next-token loss sum, token count), float64, over this data-parallel rank's share of the validation
        sequences: the first eval_batches × global_batch (all of them if fewer), dealt by validation_shard."""
        t = self.train_cfg
        n_val = min(self.data.val.num_sequences, t.eval_batches * t.global_batch)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for ids in validation_shard(n_val, dp_rank=self.layout.dp_rank, dp_size=self.layout.dp_size,
                                    micro_batch=t.micro_batch):
            x, y = self.data.val.batch(ids or [0])  # an empty batch: a stand-in forward, counted nowhere
            mean_loss = engine(x.to(self.device), y.to(self.device))  # mean over the batch's tokens
            if ids:
                sums[0] += mean_loss.double() * y.numel()
                sums[1] += y.numel()
        return sums


class ImageTask:
    def __init__(self, data: ImageData, model: ModelConfig, train: TrainConfig, layout: ParallelLayout,
                 device: torch.device):
        self.data, self.model_cfg, self.train_cfg, self.layout, self.device = data, model, train, layout, device
        self.sampler = data.sampler
        self.description = data.source
        self.items_per_sample = 1
        tokens = (model.image_size // model.patch_size) ** 2 + (model.pooling == "cls")
        per_token = 6 * model.n_layers * (4 * model.d_model**2 + 2 * model.d_model * model.ffn_dim)
        self.flops_per_item = tokens * (per_token + 12 * model.n_layers * tokens * model.d_model)

    def build_model(self) -> nn.Module:
        return ViT(self.model_cfg, label_smoothing=self.train_cfg.label_smoothing)

    def _loader(self, dataset, batches) -> DataLoader:
        workers = self.data.num_workers
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers, persistent_workers=False,
                          pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers else None)

    def train_batches(self, consumed_samples: int) -> Iterator[Batch]:
        t, layout = self.train_cfg, self.layout
        grad_accum = t.global_batch // (t.micro_batch * layout.dp_size)

        def plan():  # (index, position) keys of this rank's micro batches, step after step
            for batch_start in count(consumed_samples, t.global_batch):
                for micro_step in range(grad_accum):
                    start = sample_start(batch_start=batch_start, micro_step=micro_step, dp_rank=layout.dp_rank,
                                         dp_size=layout.dp_size, micro_batch=t.micro_batch)
                    ids = self.sampler.indices(start, t.micro_batch)
                    yield [(int(i), start + k) for k, i in enumerate(ids)]

        for images, labels in self._loader(self.data.train, plan()):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def evaluate(self, engine) -> dict[str, float]:
        stats = self.validation_sums(engine)
        dist.all_reduce(stats, group=self.layout.dp_group)  # sums, not a mean of rank means: the same at any dp
        return {"val_loss": (stats[0] / stats[2]).item(), "val_acc": (stats[1] / stats[2]).item()}

    @torch.no_grad()
    def validation_sums(self, engine) -> torch.Tensor:
        """(cross-entropy sum, correct top-1, image count), float64, over this data-parallel rank's share of the
        validation images: the first eval_batches × global_batch (all of them if fewer), dealt by
        validation_shard."""
        t = self.train_cfg
        n_val = min(len(self.data.val), t.eval_batches * t.global_batch)
        shard = validation_shard(n_val, dp_rank=self.layout.dp_rank, dp_size=self.layout.dp_size,
                                 micro_batch=t.micro_batch)
        batches = [[(i, i) for i in ids or [0]] for ids in shard]  # an empty batch: a stand-in on image 0
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        for ids, (images, labels) in zip(shard, self._loader(self.data.val, batches)):
            images, labels = images.to(self.device), labels.to(self.device)
            logits = engine(images).float()
            if ids:
                stats += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                                      (logits.argmax(-1) == labels).sum().double(),
                                      torch.tensor(len(labels), dtype=torch.float64, device=self.device)])
        return stats


def task_for(data: TextData | ImageData, model: ModelConfig, train: TrainConfig, layout: ParallelLayout,
             device: torch.device) -> Task:
    """The task of opened `data`, with the model section resolved against it."""
    if isinstance(data, ImageData):
        return ImageTask(data, model, train, layout, device)
    return TextTask(data, model, train, layout, device)


def build_task(cfg: ExperimentConfig, layout: ParallelLayout, device: torch.device, *, is_main: bool) -> Task:
    """Open cfg's data, resolve the model against it and build the task, in one call: for one-process tools
    (the reference loop, tests). The training loop takes these steps one by one, with its checks between."""
    data = open_training_data(cfg.data, cfg.model, seed=cfg.seed, show_progress=is_main)
    resolved = frozen(resolve(cfg, data.info))
    return task_for(data, resolved.model, resolved.train, layout, device)


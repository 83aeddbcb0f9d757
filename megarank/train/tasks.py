"""What the loop trains: a Task bundles one model family's data, model and validation behind one interface.

    TextTask  — GPT on token shards; validation: val_loss, val_ppl
    ImageTask — ViT on images;      validation: val_loss, val_acc (top-1, a fraction)

Both deal each global batch — the next global_batch sampler positions after the samples consumed so far — to
(micro step, data-parallel rank) slots in the same way (batches.py), so the logged global-batch loss is the
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

from megarank.config.schema import ExperimentConfig
from megarank.data.images import SeededTransform, build_transforms, open_image_splits
from megarank.data.sampler import ResumableSampler
from megarank.errors import MegarankError
from megarank.models.gpt import GPT
from megarank.models.vit import ViT
from megarank.parallel.layout import ParallelLayout
from megarank.train.batches import micro_batch, open_text_data, sample_start, validation_shard
from megarank.train.throughput import train_flops_per_token

Batch = tuple[torch.Tensor, torch.Tensor]


class Task(Protocol):
    sampler: ResumableSampler
    description: str
    items_per_sample: int
    """Tokens per sequence (text) or 1 (images): what tokens_per_s counts."""
    flops_per_item: float
    data_identity: dict[str, str]
    """Content hashes a resumed run's data must match (train_sha256, tokenizer_sha256); empty for images."""

    def build_model(self) -> nn.Module: ...

    def train_batches(self, consumed_samples: int) -> Iterator[Batch]:
        """This rank's micro batches from sampler position consumed_samples on, in (step, micro step) order."""

    def evaluate(self, engine) -> dict[str, float]:
        """Validation metrics over a fixed set of validation items, the same at any layout for the same weights
        (a collective over the data-parallel group)."""


class TextTask:
    def __init__(self, cfg: ExperimentConfig, layout: ParallelLayout, device: torch.device, *, show_progress: bool):
        self.cfg, self.layout, self.device = cfg, layout, device
        self.data = open_text_data(cfg.data, seq_len=cfg.model.seq_len, seed=cfg.seed, show_progress=show_progress)
        self.sampler = self.data.sampler
        set_vocab_size(cfg, self.data.vocab_size)
        self.description = (f"{self.data.source}, {self.data.train.num_sequences} training sequences of "
                            f"{cfg.model.seq_len} tokens")
        self.items_per_sample = cfg.model.seq_len
        self.flops_per_item = train_flops_per_token(cfg.model)
        shards = self.data.train.shards
        self.data_identity = {"train_sha256": shards.content_sha256}
        if shards.tokenizer_sha256:
            self.data_identity["tokenizer_sha256"] = shards.tokenizer_sha256

    def build_model(self) -> nn.Module:
        return GPT(self.cfg.model)

    def train_batches(self, consumed_samples: int) -> Iterator[Batch]:
        t, layout = self.cfg.train, self.layout
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
        n_val = min(self.data.val.num_sequences, self.cfg.train.eval_batches * self.cfg.train.global_batch)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for ids in validation_shard(n_val, dp_rank=self.layout.dp_rank, dp_size=self.layout.dp_size,
                                    micro_batch=self.cfg.train.micro_batch):
            x, y = self.data.val.batch(ids or [0])  # an empty batch: a stand-in forward, counted nowhere
            mean_loss = engine(x.to(self.device), y.to(self.device))  # mean over the batch's tokens
            if ids:
                sums[0] += mean_loss.double() * y.numel()
                sums[1] += y.numel()
        return sums


class ImageTask:
    def __init__(self, cfg: ExperimentConfig, layout: ParallelLayout, device: torch.device):
        self.cfg, self.layout, self.device = cfg, layout, device
        splits = open_image_splits(cfg.data)
        model = cfg.model
        if model.n_classes is None:
            model.n_classes = splits.n_classes
        elif model.n_classes < splits.n_classes:
            raise MegarankError(f"model.n_classes={model.n_classes} but the data has {splits.n_classes} classes; "
                                "unset model.n_classes to take it from the data")
        if model.in_channels != splits.in_channels:
            raise MegarankError(f"model.in_channels={model.in_channels} but the images have {splits.in_channels} "
                                f"channels; set model.in_channels={splits.in_channels}")
        train_tf, eval_tf = build_transforms(cfg.data, model.image_size, splits.in_channels)
        self.train_set = SeededTransform(splits.train, train_tf, cfg.seed)
        self.val_set = SeededTransform(splits.val, eval_tf, cfg.seed)
        self.sampler = ResumableSampler(len(splits.train), cfg.seed)
        self.description = splits.source
        self.items_per_sample = 1
        tokens = (model.image_size // model.patch_size) ** 2 + (model.pooling == "cls")
        per_token = 6 * model.n_layers * (4 * model.d_model**2 + 2 * model.d_model * model.ffn_dim)
        self.flops_per_item = tokens * (per_token + 12 * model.n_layers * tokens * model.d_model)
        self.data_identity = {}  # the sampler's num_sequences check is what guards an image resume

    def build_model(self) -> nn.Module:
        model = ViT(self.cfg.model)
        model.label_smoothing = self.cfg.train.label_smoothing
        return model

    def _loader(self, dataset, batches) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers, persistent_workers=False,
                          pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers else None)

    def train_batches(self, consumed_samples: int) -> Iterator[Batch]:
        t, layout = self.cfg.train, self.layout
        grad_accum = t.global_batch // (t.micro_batch * layout.dp_size)

        def plan():  # (index, position) keys of this rank's micro batches, step after step
            for batch_start in count(consumed_samples, t.global_batch):
                for micro_step in range(grad_accum):
                    start = sample_start(batch_start=batch_start, micro_step=micro_step, dp_rank=layout.dp_rank,
                                         dp_size=layout.dp_size, micro_batch=t.micro_batch)
                    ids = self.sampler.indices(start, t.micro_batch)
                    yield [(int(i), start + k) for k, i in enumerate(ids)]

        for images, labels in self._loader(self.train_set, plan()):
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
        n_val = min(len(self.val_set), self.cfg.train.eval_batches * self.cfg.train.global_batch)
        shard = validation_shard(n_val, dp_rank=self.layout.dp_rank, dp_size=self.layout.dp_size,
                                 micro_batch=self.cfg.train.micro_batch)
        batches = [[(i, i) for i in ids or [0]] for ids in shard]  # an empty batch: a stand-in on image 0
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        for ids, (images, labels) in zip(shard, self._loader(self.val_set, batches)):
            images, labels = images.to(self.device), labels.to(self.device)
            logits = engine(images).float()
            if ids:
                stats += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                                      (logits.argmax(-1) == labels).sum().double(),
                                      torch.tensor(len(labels), dtype=torch.float64, device=self.device)])
        return stats


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


def build_task(cfg: ExperimentConfig, layout: ParallelLayout, device: torch.device, *, is_main: bool) -> Task:
    if cfg.model.family == "vit":
        return ImageTask(cfg, layout, device)
    return TextTask(cfg, layout, device, show_progress=is_main)

"""The data a training run opens — token shards for the GPT, images for the ViT — and what the config takes
from it (DataInfo: the vocabulary, the classes, the channels; config/resolve.py fills the model from it).

The data is opened before the model is built: the model's vocabulary and class count come from here, and a
resumed run's data must match the checkpoint's (`identity`) before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from megarank.config.resolve import DataInfo
from megarank.config.schema import DataConfig, ModelConfig
from megarank.data.sampler import ResumableSampler
from megarank.data.shard_tokenizer import check_shards_tokenizer
from megarank.data.shards import TokenShards
from megarank.data.stdlib_corpus import ensure_stdlib_dataset
from megarank.data.text_dataset import TokenSequenceDataset
from megarank.errors import MegarankError

if TYPE_CHECKING:  # imported when a ViT run opens its images: torchvision (and torch._dynamo) cost a GPT ~3 s
    from megarank.data.images import SeededTransform


@dataclass
class TextData:
    train: TokenSequenceDataset
    val: TokenSequenceDataset | None
    sampler: ResumableSampler
    vocab_size: int
    source: str

    @property
    def info(self) -> DataInfo:
        return DataInfo(vocab_size=self.vocab_size)

    @property
    def identity(self) -> dict[str, str]:
        """Content hashes a resumed run's data must match (train_sha256, and tokenizer_sha256 when recorded)."""
        shards = self.train.shards
        identity = {"train_sha256": shards.content_sha256}
        if shards.tokenizer_sha256:
            identity["tokenizer_sha256"] = shards.tokenizer_sha256
        return identity


@dataclass
class ImageData:
    train: SeededTransform
    """Training items keyed by (index, sampler position): the augmentation is seeded by the position."""
    val: SeededTransform
    """Validation items keyed by (index, index): the evaluation transform (resize, centre crop)."""
    sampler: ResumableSampler
    n_classes: int
    in_channels: int
    source: str
    num_workers: int
    """DataLoader worker processes decoding images (data.num_workers)."""

    @property
    def info(self) -> DataInfo:
        return DataInfo(n_classes=self.n_classes, in_channels=self.in_channels)

    @property
    def identity(self) -> dict[str, str]:
        return {}  # the sampler's num_sequences check is what guards an image resume


def open_training_data(data: DataConfig, model: ModelConfig, *, seed: int,
                       show_progress: bool) -> TextData | ImageData:
    """The data of model.family: token shards (GPT) or images (ViT)."""
    if model.family == "vit":
        return open_image_data(data, image_size=model.image_size, seed=seed)
    return open_text_data(data, seq_len=model.seq_len, seed=seed, show_progress=show_progress)


def open_text_data(cfg: DataConfig, *, seq_len: int, seed: int, show_progress: bool) -> TextData:
    """Token shards for training (and validation when present); the embedded corpus is built on first use."""
    if cfg.path is None:
        built = ensure_stdlib_dataset(Path(cfg.cache_dir).expanduser(), cfg.tokenizer_vocab,
                                      show_progress=show_progress)
        train_dir, val_dir, source = built.train_dir, built.val_dir, f"stdlib ({built.train_dir.parent})"
        tokenizer = built.tokenizer_path
    else:
        root = Path(cfg.path).expanduser()
        train_dir, val_dir, source = root / "train", root / "val", str(root)
        if not (train_dir / "index.json").is_file():
            raise MegarankError(f"data.path '{root}' has no train/index.json; make shards with "
                                "tools/preprocess.py SOURCE --tokenizer M --out DIR, or unset data.path")
        tokenizer = cfg.tokenizer
    train_shards = TokenShards(train_dir)
    val_shards = TokenShards(val_dir) if (val_dir / "index.json").is_file() else None
    check_shards_tokenizer([train_shards] + ([val_shards] if val_shards else []), tokenizer)
    train = TokenSequenceDataset(train_shards, seq_len)
    val = TokenSequenceDataset(val_shards, seq_len) if val_shards else None
    return TextData(train=train, val=val, sampler=ResumableSampler(train.num_sequences, seed),
                    vocab_size=train_shards.vocab_size, source=source)


def open_image_data(cfg: DataConfig, *, image_size: int, seed: int) -> ImageData:
    """The image splits with their seeded training and evaluation transforms."""
    from megarank.data.images import SeededTransform, build_transforms, open_image_splits

    splits = open_image_splits(cfg)
    train_tf, eval_tf = build_transforms(cfg, image_size, splits.in_channels)
    return ImageData(train=SeededTransform(splits.train, train_tf, seed),
                     val=SeededTransform(splits.val, eval_tf, seed), sampler=ResumableSampler(len(splits.train), seed),
                     n_classes=splits.n_classes, in_channels=splits.in_channels, source=splits.source,
                     num_workers=cfg.num_workers)

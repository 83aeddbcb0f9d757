"""Image classification data for the ViT: sources, transforms, and deterministic per-sample augmentation.

Sources (`data.image_source`):
- 'digits': scikit-learn's handwritten digits (1,797 real 8×8 grey images, 10 classes), shipped inside the
  installed package, so no download; fixed split: every 5th image is validation.
- an ImageNet-style folder with train/ and val/ (one subfolder per class): torchvision's ImageFolder.
- a Hugging Face `datasets` source with image and label columns: a directory written by save_to_disk, local
  parquet/arrow files, or a hub name when online.
Augmentation randomness is seeded per sample from (seed, global sample position), so a resumed run draws
exactly the crops a straight run would have, whichever worker process decodes the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from megarank.config.schema import DataConfig
from megarank.errors import MegarankError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ImageSplits:
    train: Dataset
    """Items (image, label): image as a PIL image or a uint8 (C, H, W) tensor."""
    val: Dataset
    n_classes: int
    in_channels: int
    source: str


class _TensorImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class _HFImages(Dataset):
    def __init__(self, table, image_key: str, label_key: str):
        self.table, self.image_key, self.label_key = table, image_key, label_key

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        row = self.table[i]
        return row[self.image_key].convert("RGB"), int(row[self.label_key])


def load_digits_splits() -> ImageSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target)
    is_val = torch.arange(len(labels)) % 5 == 0
    return ImageSplits(train=_TensorImages(images[~is_val], labels[~is_val]),
                       val=_TensorImages(images[is_val], labels[is_val]), n_classes=10, in_channels=1,
                       source="scikit-learn digits (8×8, 1437 train / 360 val)")


def _load_folder_splits(root: Path) -> ImageSplits:
    from torchvision.datasets import ImageFolder

    val_dir = next((root / name for name in ("val", "validation") if (root / name).is_dir()), None)
    if val_dir is None:
        raise MegarankError(f"image folder '{root}' has train/ but no val/; add a val/ split with one folder per class")
    train = ImageFolder(str(root / "train"), loader=lambda p: _open_rgb(p))
    val = ImageFolder(str(val_dir), loader=lambda p: _open_rgb(p))
    if train.classes != val.classes:
        raise MegarankError(f"'{root}': train/ and {val_dir.name}/ have different class folders; make them match")
    return ImageSplits(train=train, val=val, n_classes=len(train.classes), in_channels=3,
                       source=f"{root} ({len(train)} train / {len(val)} val images, {len(train.classes)} classes)")


def _open_rgb(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def _load_hf_splits(source: str, image_key: str, label_key: str) -> ImageSplits:
    import datasets

    path = Path(source).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
    elif path.exists() or any(c in source for c in "*?"):
        builder = "parquet" if ".parquet" in source or path.is_dir() else "arrow"
        loaded = datasets.load_dataset(builder, data_dir=str(path)) if path.is_dir() else \
            datasets.load_dataset(builder, data_files=source)
    else:
        try:
            loaded = datasets.load_dataset(source)
        except Exception as err:  # offline, unknown name: say which, in one line
            raise MegarankError(f"data.image_source '{source}' is not a local path and could not be loaded as a "
                                f"hub dataset ({type(err).__name__}); use 'digits', an image folder or local "
                                "parquet/arrow files") from None
    if not isinstance(loaded, datasets.DatasetDict) or "train" not in loaded:
        raise MegarankError(f"'{source}' has no 'train' split; provide train and validation splits")
    val_name = next((n for n in ("validation", "val", "test") if n in loaded), None)
    if val_name is None:
        raise MegarankError(f"'{source}' has no validation split (looked for validation, val, test)")
    train, val = loaded["train"], loaded[val_name]
    for key in (image_key, label_key):
        if key not in train.column_names:
            raise MegarankError(f"'{source}' has no column '{key}' (columns: {', '.join(train.column_names)}); "
                                "set data.image_key / data.label_key")
    label_feature = train.features[label_key]
    n_classes = label_feature.num_classes if hasattr(label_feature, "num_classes") else \
        int(max(train[label_key])) + 1
    return ImageSplits(train=_HFImages(train, image_key, label_key), val=_HFImages(val, image_key, label_key),
                       n_classes=n_classes, in_channels=3, source=f"{source} ({len(train)} train / {len(val)} val)")


def open_image_splits(cfg: DataConfig) -> ImageSplits:
    if cfg.image_source == "digits":
        return load_digits_splits()
    root = Path(cfg.image_source).expanduser()
    if (root / "train").is_dir() and not (root / "dataset_dict.json").is_file():
        return _load_folder_splits(root)
    return _load_hf_splits(cfg.image_source, cfg.image_key, cfg.label_key)


def build_transforms(cfg: DataConfig, image_size: int, in_channels: int) -> tuple[v2.Transform, v2.Transform]:
    """(train, eval) transforms to normalised float tensors (C, image_size, image_size)."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.5,) * in_channels, (0.5,) * in_channels)
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    resize = max(image_size, round(image_size / cfg.eval_crop_ratio))
    evaluation = v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(image_size), *to_float])
    if not cfg.augment:
        return evaluation, evaluation
    train = [v2.ToImage(), v2.RandomResizedCrop(image_size, scale=(cfg.crop_scale_min, 1.0), antialias=True)]
    if cfg.hflip:
        train.append(v2.RandomHorizontalFlip())
    if cfg.randaugment:
        train.append(v2.RandAugment())
    return v2.Compose(train + to_float), evaluation


class SeededTransform(Dataset):
    """Items keyed by (index, position): the transform runs under torch's RNG seeded by the sample's global
    position, so augmentation is a pure function of where the sample falls in the run."""

    def __init__(self, base: Dataset, transform: v2.Transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, position = key
        image, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + position)
            return self.transform(image), label

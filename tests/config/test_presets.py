"""Every training preset loads and passes validation at the world size it is written for, and the 16×A100
presets fit a 40 GB A100 by the memory estimate (with the vocabulary of a ~50k tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megarank.bench.memory import estimate_memory
from megarank.config import load_config, validate
from tests.helpers import REPO

PRESETS = [*sorted((REPO / "configs").glob("*.yaml")), *sorted((REPO / "configs/experiments").glob("*.yaml"))]


def world_size_of(path: Path) -> int:
    return 16 if "16xa100" in path.name else 1


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads_and_validates(path):
    cfg = load_config(str(path), [])
    validate(cfg, world_size_of(path))


@pytest.mark.parametrize("path", [p for p in PRESETS if "16xa100" in p.name and "vit" not in p.name],
                         ids=lambda p: p.name)
def test_gpu_preset_fits_an_a100(path):
    cfg = load_config(str(path), ["model.vocab_size=50304"])
    assert estimate_memory(cfg, 16).total_gb < 38  # 40 GB less framework workspace


def test_1p3b_preset_needs_its_levers():
    """Without activation checkpointing and the chunked loss the 1.3B preset would not leave room for the
    workspace."""
    path = str(REPO / "configs/experiments/pile_gpt1p3b_16xa100.yaml")
    cfg = load_config(path, ["model.vocab_size=50304"])
    assert 1.2e9 < estimate_memory(cfg, 16).params_total < 1.4e9
    plain = load_config(path, ["model.vocab_size=50304", "train.activation_checkpointing=none",
                               "model.loss_chunk_tokens=0"])
    assert estimate_memory(plain, 16).total_gb > 37

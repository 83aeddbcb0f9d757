"""attention_rank_summary on models in memory against the offline analysis of the same weights: the reference
run's checkpoint loaded into a GPT (fp32 and bf16), a wrapped model, a ViT, and partitioned (empty) weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megarank.analysis.live import attention_rank_summary
from megarank.analysis.readers import open_source
from megarank.analysis.report import analyse
from megarank.config.schema import ModelConfig
from megarank.models.vit import ViT
from tests.analysis.test_megarank_ckpt import rebuilt_gpt, tag


@pytest.fixture(scope="module")
def offline(reference_run):
    with open_source(reference_run) as source:
        return analyse(source, rtol=0.05, atol=1e-3, progress=False)


def expected_keys(n_layers: int) -> set[str]:
    per_layer = {f"rank/{p}_mean/layer{i}" for p in ("qk", "ov") for i in range(n_layers)}
    return per_layer | {f"{m}/{p}_mean" for m in ("rank", "effective_rank", "balance") for p in ("qk", "ov")}


def test_summary_matches_the_offline_analysis(reference_run, offline):
    summary = attention_rank_summary(rebuilt_gpt(tag(reference_run)), n_heads=4, rtol=0.05)
    assert set(summary) == expected_keys(2) and all(isinstance(v, float) for v in summary.values())
    layer_means, means = offline.layer_means(), offline.means()
    for product in ("qk", "ov"):
        for layer in range(2):
            assert summary[f"rank/{product}_mean/layer{layer}"] == pytest.approx(layer_means[product]["rank"][layer])
        for name in ("rank", "effective_rank", "balance"):
            assert summary[f"{name}/{product}_mean"] == pytest.approx(means[product][name], rel=1e-12)


def test_bf16_and_wrapped_models(reference_run):
    model = rebuilt_gpt(tag(reference_run))
    fp32 = attention_rank_summary(model, n_heads=4, rtol=0.05)

    class Wrapper(nn.Module):  # names become module.blocks.<i>.attn, as under DDP or an engine
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    bf16 = attention_rank_summary(Wrapper(model.to(torch.bfloat16)), n_heads=4, rtol=0.05)
    assert set(bf16) == set(fp32)
    for key, value in fp32.items():  # bf16 rounding moves the spectra by ~2⁻⁹ relative
        assert bf16[key] == pytest.approx(value, rel=1e-2), key


def test_vit_blocks_use_the_same_names():
    cfg = ModelConfig(family="vit", n_layers=3, d_model=32, n_heads=4, image_size=8, patch_size=4, n_classes=10)
    summary = attention_rank_summary(ViT(cfg), n_heads=4, rtol=1e-2)
    assert set(summary) == expected_keys(3)
    assert summary["rank/qk_mean"] == 8.0  # random init: full rank d_head


def test_partitioned_weights_are_refused(reference_run):
    model = rebuilt_gpt(tag(reference_run))
    model.blocks[0].attn.q_proj.weight = nn.Parameter(torch.empty(0))
    with pytest.raises(ValueError, match="gather the parameters first"):
        attention_rank_summary(model, n_heads=4, rtol=1e-2)
    with pytest.raises(ValueError, match="no attention modules"):
        attention_rank_summary(nn.Linear(3, 3), n_heads=1, rtol=1e-2)


def test_training_logs_at_the_tools_default_rtol():
    from megarank.analysis.spectra import DEFAULT_RTOL
    from megarank.config import AnalysisConfig

    assert AnalysisConfig().rtol == DEFAULT_RTOL

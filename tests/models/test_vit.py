"""The ViT against references: shapes and pooling, the loss with label smoothing against F.cross_entropy's,
linear patch embedding equal to an explicit unfold + matmul, the position table interpolated on load at a new
image size (class slot kept), every parameter claimed by a decay role."""

from __future__ import annotations

import pytest
import torch

from megarank.config import ModelConfig, OptimConfig
from megarank.models.vit import ViT, resize_pos_embed
from megarank.optim.groups import build_param_groups


def vit(**kw) -> ViT:
    torch.manual_seed(0)
    return ViT(ModelConfig(**{"family": "vit", "n_layers": 2, "d_model": 32, "n_heads": 4, "image_size": 8,
                              "patch_size": 2, "in_channels": 1, "n_classes": 10, **kw}))


@pytest.mark.parametrize("pooling, patch_embed", [("cls", "conv"), ("mean", "linear")])
def test_shapes_and_loss(pooling, patch_embed):
    model = vit(pooling=pooling, patch_embed=patch_embed)
    images, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 4, 9])
    assert model(images).shape == (3, 10)
    assert model.pos_embed.shape == (1, 16 + (pooling == "cls"), 32)
    torch.testing.assert_close(model(images, labels), torch.nn.functional.cross_entropy(model(images), labels))


def test_label_smoothing_is_the_constructors():
    torch.manual_seed(0)
    cfg = ModelConfig(family="vit", n_layers=1, d_model=32, n_heads=4, image_size=8, patch_size=2, in_channels=1,
                      n_classes=10)
    model = ViT(cfg, label_smoothing=0.1)
    with torch.no_grad():
        model.head.weight.normal_()  # the zero head's uniform logits would hide the smoothing
    images, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 4, 9])
    expected = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=0.1)
    torch.testing.assert_close(model(images, labels), expected)


def test_linear_patch_embedding_is_flattened_patches_times_weight():
    model = vit(patch_embed="linear")
    image = torch.randn(1, 1, 8, 8)
    patches = image.reshape(1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(1, 16, 4)  # row-major 2×2 patches
    expected = patches @ model.patch_embed.proj.weight.T + model.patch_embed.proj.bias
    torch.testing.assert_close(model.patch_embed(image), expected)


def test_position_table_interpolates_on_load():
    small = vit()
    with torch.no_grad():
        small.pos_embed.normal_()
    large = vit(image_size=16)
    large.load_state_dict(small.state_dict())
    assert large.pos_embed.shape == (1, 65, 32)
    torch.testing.assert_close(large.pos_embed[:, 0], small.pos_embed[:, 0])  # class token slot untouched
    same = resize_pos_embed(small.pos_embed.detach(), 4, has_cls=True)
    torch.testing.assert_close(same, small.pos_embed.detach(), atol=1e-5, rtol=1e-5)  # identity at equal size


def test_decay_groups_cover_the_vit():
    model = vit(bias=True)
    groups = {g["name"]: g for g in build_param_groups(model, OptimConfig(wd_attn=0.3, wd_mlp=0.2, wd_other=0.1))}
    assert set(groups) == {"no_decay", "attn", "mlp", "other"}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in groups["other"]["params"]) == [
        "cls_token", "head.weight", "patch_embed.proj.weight", "pos_embed"]
    assert len(groups["attn"]["params"]) == 8 and groups["attn"]["weight_decay"] == 0.3

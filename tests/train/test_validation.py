"""Validation is a fixed set, whatever the layout: the first eval_batches × global_batch validation sequences
(images), dealt over the data-parallel ranks by validation_shard.

In one process, the per-rank sums of a GPT and a ViT at data-parallel sizes 1 to 4 (uneven shares and
stand-in batches included) add up to the loss summed over the whole set in one batch, within 1e-6. The
multi-process runs in test_data_parallel.py and test_multinode.py check the same against the val_loss that
real DP=2 and TP=2 × DP=2 runs log.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megarank.config import load_config
from megarank.models.gpt import GPT
from megarank.models.vit import ViT
from megarank.data.batches import validation_shard
from megarank.parallel.layout import ParallelLayout
from megarank.train.tasks import build_task
from tests.helpers import TINY, VIT_TINY


def dp_slot(dp_rank: int, dp_size: int) -> ParallelLayout:
    return ParallelLayout(tp_size=1, dp_size=dp_size, tp_rank=0, dp_rank=dp_rank, tp_group=None, dp_group=None)


@pytest.mark.parametrize("n_items", [1, 7, 10, 64])
@pytest.mark.parametrize("dp_size", [1, 2, 3, 4])
def test_shards_cover_every_item_once_in_lock_step(n_items, dp_size):
    shards = [validation_shard(n_items, dp_rank=r, dp_size=dp_size, micro_batch=3) for r in range(dp_size)]
    items = sorted(i for shard in shards for batch in shard for i in batch)
    assert items == list(range(n_items))
    assert len({len(shard) for shard in shards}) == 1, "every rank runs as many forwards"
    assert all(len(batch) <= 3 for shard in shards for batch in shard)


@pytest.fixture(scope="module")
def text_setup(tiny_corpus):
    # 10 sequences (eval_batches × global_batch) in micro batches of 3: uneven shares at dp 3 and 4
    cfg = load_config("configs/default.yaml", [*TINY, f"data.path={tiny_corpus}", "train.eval_batches=1",
                                               "train.global_batch=10", "train.micro_batch=3"])
    tasks = {dp: [build_task(cfg, dp_slot(r, dp), torch.device("cpu"), is_main=False) for r in range(dp)]
             for dp in (1, 2, 3, 4)}
    torch.manual_seed(0)
    model = GPT(tasks[1][0].model_cfg).eval()
    x, y = tasks[1][0].data.val.batch(range(10))
    with torch.no_grad():
        logits = model(x)
    expected = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").double()
    return tasks, model, expected, y.numel()


@pytest.mark.parametrize("dp_size", [1, 2, 3, 4])
def test_text_validation_sums_match_the_whole_set(text_setup, dp_size):
    tasks, model, expected_loss, expected_tokens = text_setup
    loss_sum, tokens = sum(task.validation_sums(model) for task in tasks[dp_size]).tolist()
    assert tokens == expected_tokens == 10 * 16
    assert loss_sum == pytest.approx(expected_loss.item(), rel=1e-6)


@pytest.mark.parametrize("dp_size", [1, 2, 3])
def test_image_validation_sums_match_the_whole_split(dp_size):
    # eval_batches × global_batch = 400 is more than the 360 digits in the validation split: all of them
    cfg = load_config("configs/vit_default.yaml", [*VIT_TINY, "train.eval_batches=25", "train.micro_batch=64"])
    tasks = [build_task(cfg, dp_slot(r, dp_size), torch.device("cpu"), is_main=False) for r in range(dp_size)]
    torch.manual_seed(0)
    model = ViT(tasks[0].model_cfg).eval()
    val_set = tasks[0].data.val
    images = torch.stack([val_set[(i, i)][0] for i in range(360)])
    labels = torch.tensor([val_set[(i, i)][1] for i in range(360)])
    with torch.no_grad():
        logits = model(images)
    loss_sum, correct, count = sum(task.validation_sums(model) for task in tasks).tolist()
    assert count == len(val_set) == 360
    assert correct == (logits.argmax(-1) == labels).sum().item()
    assert loss_sum == pytest.approx(F.cross_entropy(logits, labels, reduction="sum").item(), rel=1e-6)


def val_loss_in_one_process(run_dir) -> float:
    """The validation loss of a GPT run's last checkpoint, merged to TP=1 and evaluated here on one rank."""
    from megarank.evaluation.load import load_gpt

    task = build_task(load_config(run_dir / "config.yaml"), dp_slot(0, 1), torch.device("cpu"), is_main=False)
    loss_sum, tokens = task.validation_sums(load_gpt(run_dir).model).tolist()
    return loss_sum / tokens

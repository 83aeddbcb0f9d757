"""megarank-eval is the same whatever layout the checkpoint was trained at: 2-process runs (DeepSpeed launcher,
CPU, gloo) with the tiny GPT's seed, data and schedule (8 steps: the LR schedule depends on max_steps),
evaluated at their last step, against the 1-process ZeRO-1 `reference_run`'s last checkpoint (step 8):

- ZeRO-3 over 2 data-parallel ranks (module weights rebuilt from the partitions by zero_to_fp32);
- TP=2 (each rank holds half the heads, half the MLP and half the vocabulary, merged by the TP styles the
  checkpoint's marker records).

The runs train the same model on the same batches, so their weights agree to the tolerance the suite uses for
these layouts (1e-5 relative, tests/parallel/test_tensor_parallel.py), and so must the merged GPT and its loss.
The runs are the session's shared `dp2-zero3` and `tp2-zero1` (tests/runs.py).
"""

from __future__ import annotations

import pytest
import torch

from megarank.evaluation import evaluate_checkpoint
from megarank.evaluation.load import load_gpt

LAYOUTS = ("dp2-zero3", "tp2-zero1")


@pytest.fixture(scope="module", params=LAYOUTS)
def layout_run(request, launched):
    return request.param, launched(request.param)


def test_weights_and_perplexity_match_the_single_process_run(layout_run, reference_run):
    name, run_dir = layout_run
    merged, reference = load_gpt(run_dir), load_gpt(reference_run)
    assert merged.step == reference.step == 8
    expected = {"dp2-zero3": {"tp": 1, "dp": 2, "zero_stage": 3}, "tp2-zero1": {"tp": 2, "dp": 1, "zero_stage": 1}}
    assert merged.layout == expected[name]
    ours, theirs = merged.model.state_dict(), reference.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-7, msg=key)
    result = evaluate_checkpoint(run_dir, split="val", progress=False)
    expected_result = evaluate_checkpoint(reference_run, split="val", progress=False)
    assert result["tokens"] == expected_result["tokens"]
    assert result["loss"] == pytest.approx(expected_result["loss"], rel=1e-5)

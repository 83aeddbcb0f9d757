"""Absolute numbers, against stored files: a tiny GPT's and a tiny ViT's per-step training losses and final
validation metrics must match tests/golden/*.json. Every other training test compares two runs of the same
code, so only this catches a drift that moves both alike (a dependency release, a changed default, a data
pipeline change). The tolerance, 1e-4, is 400× the float noise (1 vs 2 threads: at most 5e-7 over these 30
steps) and below a small real change (data.crop_scale_min 0.7 -> 0.8 moves the ViT's losses by up to 9e-4).
A deliberate change: `python -m tests.golden.regenerate`, then review and commit tests/golden/*.json."""

from __future__ import annotations

import json

import pytest

from tests.golden.runs import RUNS, golden_path, golden_record

LOSS_ATOL = 1e-4
VAL_LOSS_ATOL = 1e-4
VAL_ACC_ATOL = 2 / 360  # two of the 360 validation digits


@pytest.mark.parametrize("name", list(RUNS))
def test_matches_golden_file(name, tiny_corpus, tmp_path):
    golden = json.loads(golden_path(name).read_text())
    corpus = tiny_corpus if name.startswith("gpt") else None
    measured = golden_record(name, tmp_path / "run", corpus)
    regenerate = "if the change is deliberate, run `python -m tests.golden.regenerate` and commit the files"
    assert measured["data"] == golden["data"], (
        f"the {name} training data differ from the golden run's (made with Python {golden['python']}, here "
        f"{measured['python']}): tokens or tokenizer changed before training did; {regenerate}")
    assert measured["losses"].keys() == golden["losses"].keys()
    drift = {step: (measured["losses"][step], expected) for step, expected in golden["losses"].items()
             if abs(measured["losses"][step] - expected) > LOSS_ATOL}
    assert not drift, f"{name}: training loss drifted at steps (measured, golden) {drift}; {regenerate}"
    final, expected = measured["final"], golden["final"]
    assert final.keys() == expected.keys()
    assert final["val_loss"] == pytest.approx(expected["val_loss"], abs=VAL_LOSS_ATOL), regenerate
    if "val_acc" in expected:
        assert final["val_acc"] == pytest.approx(expected["val_acc"], abs=VAL_ACC_ATOL), regenerate

"""megarank/experiments/sweeps.py's small helpers against values worked out by hand: the halving point's linear
interpolation, and the total decay read off a gathered record (a product falling back to the shared attn group)."""

from __future__ import annotations

import pytest

from megarank.experiments.sweeps import halving_point, total_decay


@pytest.mark.parametrize("xs, ys, expected", [
    ([0, 1, 3], [32, 20, 8], 1 + (20 - 16) / (20 - 8) * 2),  # between the 2nd and 3rd point
    ([0, 1, 3], [32, 16, 8], 1.0),  # exactly half at a grid point
    ([0, 2], [10, 0], 1.0),
    ([0, 1, 3], [32, 30, 17], None),  # never at half: not within the grid
    ([0, 1, 3], [32, 10, 20], (32 - 16) / (32 - 10)),  # the first crossing counts
])
def test_halving_point(xs, ys, expected):
    result = halving_point(xs, ys)
    assert result == (None if expected is None else pytest.approx(expected))


def test_total_decay_falls_back_to_attn():
    record = {"sum_lr_wd/attn": 0.9, "sum_lr_wd/mlp": 0.3}
    assert total_decay(record, "qk") == total_decay(record, "ov") == 0.9
    assert total_decay(record, "mlp") == 0.3 and total_decay(record, "other") is None
    split = {"sum_lr_wd/qk": 2.0, "sum_lr_wd/ov": 0.0}
    assert total_decay(split, "qk") == 2.0 and total_decay(split, "ov") == 0.0

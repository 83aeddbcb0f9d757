"""ResumableSampler: each epoch against torch.randperm seeded as documented, one long indices() call against
many short ones from fresh samplers (a resume at every step), and the checkpoint check against changed data."""

import numpy as np
import pytest
import torch

from megarank.data.sampler import ResumableSampler
from megarank.errors import MegarankError

N, SEED = 11, 1234


def reference_epoch(epoch: int, seed: int = SEED) -> np.ndarray:
    return torch.randperm(N, generator=torch.Generator().manual_seed(seed + 1_000_003 * epoch)).numpy()


def test_each_epoch_is_the_documented_permutation():
    sampler = ResumableSampler(N, SEED)
    drawn = sampler.indices(0, 3 * N)
    for epoch in range(3):
        np.testing.assert_array_equal(drawn[epoch * N : (epoch + 1) * N], reference_epoch(epoch))
        assert sorted(drawn[epoch * N : (epoch + 1) * N]) == list(range(N))


def test_a_call_spanning_epochs_joins_their_ends():
    drawn = ResumableSampler(N, SEED).indices(N - 2, 4)
    np.testing.assert_array_equal(drawn, np.concatenate([reference_epoch(0)[-2:], reference_epoch(1)[:2]]))


def test_resuming_anywhere_gives_the_straight_sequence():
    straight = ResumableSampler(N, SEED).indices(0, 5 * N + 3)
    rng = np.random.default_rng(0)
    pieces, position = [], 0
    while position < len(straight):
        count = min(int(rng.integers(0, 2 * N)), len(straight) - position)
        pieces.append(ResumableSampler(N, SEED).indices(position, count))  # a fresh sampler: nothing carried over
        position += count
    np.testing.assert_array_equal(np.concatenate(pieces), straight)


def test_seeds_and_epochs_give_different_orders():
    a, b = ResumableSampler(N, SEED), ResumableSampler(N, SEED + 1)
    assert not np.array_equal(a.indices(0, N), b.indices(0, N))
    assert not np.array_equal(a.indices(0, N), a.indices(N, N))


def test_state_round_trip_returns_consumed_samples():
    sampler = ResumableSampler(N, SEED)
    state = sampler.state_dict(consumed_samples=37)
    assert state == {"consumed_samples": 37, "seed": SEED, "num_sequences": N}
    assert ResumableSampler(N, SEED).check_state(state) == 37


def test_state_saved_with_the_old_shuffle_key_still_resumes():
    """Checkpoints written before the shuffle switch went record shuffle: true beside the rest."""
    saved = {"consumed_samples": 37, "seed": SEED, "num_sequences": N, "shuffle": True}
    assert ResumableSampler(N, SEED).check_state(saved) == 37


@pytest.mark.parametrize(
    ("changed", "field"),
    [(ResumableSampler(N, SEED + 1), "seed"), (ResumableSampler(N + 1, SEED), "num_sequences")],
)
def test_changed_data_is_refused_on_resume(changed, field):
    state = ResumableSampler(N, SEED).state_dict(consumed_samples=5)
    with pytest.raises(MegarankError, match=f"data changed since checkpoint: sampler {field} was"):
        changed.check_state(state)


def test_empty_data_is_an_error():
    with pytest.raises(MegarankError, match="at least one sequence"):
        ResumableSampler(0, SEED)

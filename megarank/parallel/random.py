"""Dropout randomness under tensor parallelism (Megatron-LM's model-parallel RNG).

Two streams: the default torch generator, seeded the same on every TP rank, for dropout on replicated
activations (embeddings, residual branches after the row-parallel reduce) so TP peers drop the same units;
and a TP-local stream (seed + 2718 + tp_rank, Megatron's offset) for dropout inside the TP region, on the
attention probabilities of each rank's own heads, so different heads get independent masks (tensor_parallel.py
sets each SelfAttention's rng_region hook to `fork`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

TP_SEED_OFFSET = 2718


def _get(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class TPRandomState:
    """The TP-local stream, entered with `fork()`; the default stream is untouched by it."""

    def __init__(self, seed: int, tp_rank: int, device: torch.device):
        self.device = device
        default = _get(device)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed + TP_SEED_OFFSET + tp_rank)
        else:
            torch.manual_seed(seed + TP_SEED_OFFSET + tp_rank)
        self.state = _get(device)
        _set(default, device)

    @contextmanager
    def fork(self):
        default = _get(self.device)
        _set(self.state, self.device)
        try:
            yield
        finally:
            self.state = _get(self.device)
            _set(default, self.device)

    def state_dict(self) -> dict:
        return {"state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.state = state["state"]

"""Checks that span config sections or need the process count: run once, on the resolved config (resolve.py),
before anything is built or written."""

from __future__ import annotations

from megarank.config.schema import ExperimentConfig
from megarank.errors import MegarankError


def data_parallel_size(cfg: ExperimentConfig, world_size: int) -> int:
    if world_size % cfg.parallel.tp:
        raise MegarankError(f"world size {world_size} is not divisible by parallel.tp={cfg.parallel.tp}; "
                            "launch a multiple of tp processes")
    return world_size // cfg.parallel.tp


def gradient_accumulation_steps(cfg: ExperimentConfig, world_size: int) -> int:
    dp = data_parallel_size(cfg, world_size)
    per_step = cfg.train.micro_batch * dp
    if cfg.train.global_batch % per_step:
        raise MegarankError(
            f"train.global_batch={cfg.train.global_batch} is not divisible by train.micro_batch × data-parallel "
            f"size = {cfg.train.micro_batch} × {dp} = {per_step}; make global_batch a multiple of {per_step}")
    return cfg.train.global_batch // per_step


def validate(cfg: ExperimentConfig, world_size: int) -> None:
    """Raise MegarankError for the first inconsistency between sections at this world size."""
    gradient_accumulation_steps(cfg, world_size)
    tp, model = cfg.parallel.tp, cfg.model
    if model.n_heads % tp:
        raise MegarankError(f"model.n_heads={model.n_heads} is not divisible by parallel.tp={tp}; "
                            "choose tp dividing the head count")
    if model.kv_heads % tp:
        raise MegarankError(f"model.n_kv_heads={model.kv_heads} is not divisible by parallel.tp={tp}: each TP rank "
                            "holds whole K/V heads; choose tp dividing n_kv_heads")
    if model.ffn_dim % tp:
        raise MegarankError(f"MLP width {model.ffn_dim} is not divisible by parallel.tp={tp}; set model.d_ff")
    if cfg.train.compile and model.dropout > 0 and tp > 1:
        # TP>1 draws attention dropout inside a swap to the TP-local RNG stream (parallel/random.py), whose
        # get/set_rng_state torch.compile cannot trace (fullgraph: a graph break is an error at the first step)
        raise MegarankError(f"train.compile=true cannot trace the TP-local dropout stream at parallel.tp={tp} "
                            f"with model.dropout={model.dropout}; set model.dropout=0 or train.compile=false")
    if model.position == "rotary" and model.d_head % 2:
        raise MegarankError(f"rotary positions need an even head dim, got {model.d_head}; change n_heads")
    # the vocabulary is known once resolve() has read the data (or when the config sets it)
    if model.family == "gpt" and model.vocab_size is not None and model.vocab_size % tp:
        raise MegarankError(f"model.vocab_size={model.vocab_size} is not divisible by parallel.tp={tp}; "
                            "make model.vocab_multiple a multiple of tp")

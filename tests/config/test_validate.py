"""megarank/config/validate.py's refusal of train.compile with model.dropout > 0 at parallel.tp > 1, against what
it guards: at TP > 1 attention dropout draws inside a swap to the TP-local RNG stream (megarank/parallel/random.py
TPRandomState.fork, the hook apply_tensor_parallel installs on every attention), and a compiled block
(megarank/parallel/compile.py, fullgraph) with that hook fails at its first training forward. With dropout 0 the
swap is never entered, and compiled blocks at TP=2 train (tests/runs.py 'tp2-zero3-every-lever',
tests/train/test_levers.py). The combinations on either side of the refusal validate."""

from __future__ import annotations

import pytest
import torch

from megarank.config import DataInfo, ModelConfig, load_config, resolve, validate
from megarank.errors import MegarankError
from megarank.models.attention import SelfAttention
from megarank.models.gpt import GPT
from megarank.parallel.compile import compile_blocks
from megarank.parallel.random import TPRandomState

TP2 = ("parallel.tp=2", "train.global_batch=32", "train.micro_batch=16")


def resolved(*overrides: str):
    return resolve(load_config("configs/default.yaml", list(overrides)), DataInfo(vocab_size=4096))


def test_compile_with_dropout_at_tp2_is_one_line_naming_the_fix():
    cfg = resolved(*TP2, "train.compile=true", "model.dropout=0.1")
    with pytest.raises(MegarankError) as err:
        validate(cfg, world_size=2)
    message = str(err.value)
    assert "\n" not in message
    assert message == ("train.compile=true cannot trace the TP-local dropout stream at parallel.tp=2 with "
                       "model.dropout=0.1; set model.dropout=0 or train.compile=false")


@pytest.mark.parametrize("overrides", [
    (*TP2, "train.compile=true", "model.dropout=0.0"),  # compile at TP=2 without dropout
    (*TP2, "train.compile=false", "model.dropout=0.1"),  # dropout at TP=2 without compile
    ("train.global_batch=32", "train.micro_batch=16", "train.compile=true", "model.dropout=0.1")],  # TP=1
    ids=["compile-tp2", "dropout-tp2", "compile-dropout-tp1"])
def test_the_combinations_beside_it_validate(overrides):
    validate(resolved(*overrides), world_size=2)


def test_a_compiled_block_cannot_trace_the_tp_dropout_stream():
    torch._dynamo.reset()  # another test in this worker may have used up the block's recompile limit
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=1, d_model=32, n_heads=4, seq_len=8, vocab_size=20, dropout=0.1,
                            attn_backend="math"))
    rng = TPRandomState(seed=0, tp_rank=0, device=torch.device("cpu"))
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.rng_region = rng.fork  # as apply_tensor_parallel at tp_size > 1
    compile_blocks(model)
    ids = torch.randint(0, 20, (2, 8))
    try:
        with pytest.raises(torch._dynamo.exc.Unsupported):
            model.train()(ids, ids)
    finally:
        torch._dynamo.reset()

"""Apply tensor parallelism to a built model, as a separate step (torchtitan's `parallelize`).

TP_PLAN below is the whole plan: submodule (by name suffix) -> how it is sharded. The model file itself holds
no collectives; after this step its linears, embedding and loss are the parallel versions from layers.py.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from megarank.parallel.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                      vocab_parallel_cross_entropy)
from megarank.parallel.layout import ParallelLayout
from megarank.parallel.random import TPRandomState

TP_PLAN: dict[str, str] = {
    "attn.q_proj": "column",  # heads split across ranks: rank r holds heads [r*nh/tp, (r+1)*nh/tp)
    "attn.k_proj": "column",
    "attn.v_proj": "column",
    "attn.o_proj": "row",  # consumes its rank's heads, all-reduces the partial outputs
    "attn": "tp_dropout",  # attention-probability dropout on this rank's own heads: the TP-local RNG stream
    "mlp.fc_in": "column",
    "mlp.fc_out": "row",
    "wte": "vocab",  # embedding rows split by vocabulary id
    "lm_head": "vocab_column",  # logits split by vocabulary; tied to wte's shard; the model's loss vocab-parallel
}
# (a module no entry names stays replicated: LayerNorms, positions, the ViT's patch embedding and class head)


def parallelize(model: nn.Module, layout: ParallelLayout, *, seed: int, device) -> TPRandomState:
    """Shard `model` in place for this rank's TP slot, module by module as TP_PLAN says; returns the TP-local
    dropout stream.

    With tp_size 1 the model is left as it is (plain nn.Linear / nn.Embedding / cross-entropy)."""
    rng = TPRandomState(seed, layout.tp_rank, device)
    if layout.tp_size == 1:
        return rng
    kw = dict(tp_rank=layout.tp_rank, tp_size=layout.tp_size, group=layout.tp_group)
    # named_modules lists wte before lm_head, so a tied head finds the embedding already sharded
    for name, module in list(model.named_modules()):
        style = plan_style(name)
        if style == "column":
            _replace(model, name, ColumnParallelLinear(module, **kw))
        elif style == "row":
            _replace(model, name, RowParallelLinear(module, **kw))
        elif style == "vocab":
            _replace(model, name, VocabParallelEmbedding(module, **kw))
        elif style == "vocab_column":
            _replace(model, name, _vocab_parallel_head(model, module, layout, kw))
        elif style == "tp_dropout":
            module.rng_region = rng.fork
    return rng


def plan_style(module_name: str) -> str | None:
    """TP_PLAN's style for a module, matched by name suffix; None: replicated."""
    return next((s for suffix, s in TP_PLAN.items()
                 if module_name == suffix or module_name.endswith("." + suffix)), None)


def _vocab_parallel_head(model: nn.Module, head: nn.Linear, layout: ParallelLayout, kw: dict) -> nn.Module:
    """The LM head split by vocabulary (sharing the sharded embedding's rows when tied), and the model's loss
    swapped for the vocabulary-parallel one that never gathers the logits."""
    embedding = model.wte
    model.loss_fn = partial(vocab_parallel_cross_entropy, group=layout.tp_group, vocab_start=embedding.vocab_start)
    return ColumnParallelLinear(head, **kw, weight=embedding.weight if model.cfg.tie_embeddings else None)


def param_shard_styles(model: nn.Module) -> dict[str, str]:
    """How each parameter is laid out across TP ranks: 'column' (split dim 0), 'row' (split dim 1), 'vocab'
    (split dim 0 by vocabulary id) or 'replicated' — read off TP_PLAN, for checkpoint re-sharding."""
    styles = {}
    for name, _ in model.named_parameters():
        module_name, _, kind = name.rpartition(".")
        style = plan_style(module_name) or "replicated"
        if style == "vocab_column":
            style = "vocab"
        if style == "row" and kind == "bias":  # added after the reduce, whole on every rank
            style = "replicated"
        styles[name] = style
    return styles


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)

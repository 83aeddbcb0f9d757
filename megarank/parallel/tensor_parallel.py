"""Apply tensor parallelism to a built model, as a separate step (torchtitan's `parallelize`, of which this is
the TP part: megarank/parallel/parallelize.py runs it, then activation checkpointing, then compile).

The plan is read off the roles table (megarank/models/roles.py): every module that owns a `weight` is replaced
by the layer its weight's TP style names, and nothing else is touched:

    nn.Linear,    style 'column'  -> ColumnParallelLinear   (q, k, v, mlp_in: whole heads / features per rank)
    nn.Linear,    style 'row'     -> RowParallelLinear      (o, mlp_out: partial sums all-reduced)
    nn.Embedding, style 'vocab'   -> VocabParallelEmbedding (rows split by vocabulary id)
    nn.Linear,    style 'vocab'   -> the head split by vocabulary, and the model's loss_fn the vocabulary-parallel
                                     cross-entropy that never gathers the logits
    style 'replicated'            -> left as it is (norms, positions, the ViT's patch embedding and class head)

Two hooks the models expose for this step, set here and nowhere else: SelfAttention.rng_region (the
attention-probability dropout draws from the TP-local stream, so each rank's heads get their own masks) and
GPT.loss_fn (the loss of the vocab-split logits). The model file itself holds no collectives.

Grouped-query attention needs nothing more: k_proj and v_proj are column-split like q_proj, so rank t holds
query heads [t·n_heads/tp, ...) and exactly the K/V heads [t·n_kv_heads/tp, ...) they read (validate.py
requires tp to divide n_kv_heads). The per-head q/k norms (model.qk_norm) are replicated but act on the local
heads, so each becomes a LocalHeadsRMSNorm, whose gain's gradient is summed over the TP ranks.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from megarank.errors import MegarankError
from megarank.models.attention import SelfAttention
from megarank.models.roles import role_of
from megarank.parallel.layers import (ColumnParallelLinear, LocalHeadsRMSNorm, RowParallelLinear,
                                      VocabParallelEmbedding, vocab_parallel_cross_entropy)
from megarank.parallel.layout import ParallelLayout
from megarank.parallel.random import TPRandomState

_LAYERS = {  # (module type, TP style of its weight) -> the parallel layer that replaces it
    (nn.Linear, "column"): ColumnParallelLinear,
    (nn.Linear, "row"): RowParallelLinear,
    (nn.Linear, "vocab"): ColumnParallelLinear,  # a head: its output features are the vocabulary
    (nn.Embedding, "vocab"): VocabParallelEmbedding,
}
_BIAS_STYLE = {"column": "column", "row": "replicated", "vocab": "vocab"}
"""What each layer does with its bias: split with the output features, or added whole after the reduction."""


def apply_tensor_parallel(model: nn.Module, layout: ParallelLayout, *, seed: int, device) -> TPRandomState:
    """Shard `model` in place for this rank's TP slot as tp_plan(model) says; returns the TP-local dropout
    stream. With tp_size 1 the model is left as it is (plain nn.Linear / nn.Embedding / cross-entropy)."""
    rng = TPRandomState(seed, layout.tp_rank, device)
    if layout.tp_size == 1:
        return rng
    kw = dict(tp_rank=layout.tp_rank, tp_size=layout.tp_size, group=layout.tp_group)
    plan = tp_plan(model)
    full = {name: model.get_submodule(name) for name in plan}  # the TP=1 modules, kept while they are replaced
    shards: dict[int, tuple[str, nn.Parameter]] = {}  # id(full weight) -> (style, shard): a tied weight is split once
    for name, style in plan.items():
        module = full[name]
        layer = _LAYERS[type(module), style]
        if id(module.weight) in shards:  # tied to a weight sharded before (the head to the token embedding)
            tied_style, shard = shards[id(module.weight)]
            if tied_style != style:
                raise MegarankError(f"'{name}.weight' ({style}) is tied to a '{tied_style}' weight: tied weights "
                                    "need one TP style in megarank/models/roles.py")
            parallel = layer(module, **kw, weight=shard)
        else:
            parallel = layer(module, **kw)
            shards[id(module.weight)] = (style, parallel.weight)
        _replace(model, name, parallel)
        if isinstance(module, nn.Linear) and style == "vocab":
            _use_vocab_parallel_loss(model, parallel, layout)
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.rng_region = rng.fork
            if module.q_norm is not None:
                module.q_norm = LocalHeadsRMSNorm(module.q_norm, group=layout.tp_group)
                module.k_norm = LocalHeadsRMSNorm(module.k_norm, group=layout.tp_group)
    return rng


def tp_plan(model: nn.Module) -> dict[str, str]:
    """{module name: TP style} of every module the TP step replaces, in model order: the modules that own a
    `weight` whose role's TP style is not 'replicated'. A style on a module type it cannot shard, or a bias
    style other than the layer gives it, is an error."""
    plan = {}
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if "weight" not in own:
            continue
        weight_name = f"{name}.weight" if name else "weight"
        style = role_of(weight_name).tp_style
        if style == "replicated":
            continue
        if (type(module), style) not in _LAYERS:
            raise MegarankError(f"'{weight_name}' has TP style '{style}' (megarank/models/roles.py), which a "
                                f"{type(module).__name__} cannot take: make it 'replicated' or the module a "
                                f"{' / '.join(sorted({t.__name__ for t, s in _LAYERS if s == style}))}")
        bias_name = f"{name}.bias" if name else "bias"
        if "bias" in own and role_of(bias_name).tp_style != _BIAS_STYLE[style]:
            raise MegarankError(f"'{bias_name}' has TP style '{role_of(bias_name).tp_style}' in "
                                f"megarank/models/roles.py, but a {style}-parallel layer's bias is "
                                f"'{_BIAS_STYLE[style]}'")
        plan[name] = style
    return plan


def _use_vocab_parallel_loss(model: nn.Module, head: nn.Module, layout: ParallelLayout) -> None:
    """Set the model's loss_fn hook to the cross-entropy of logits split by vocabulary: this rank holds the
    head's rows [vocab_start, vocab_start + vocab / tp)."""
    if not callable(getattr(model, "loss_fn", None)):
        raise MegarankError(f"{type(model).__name__} has a vocabulary-parallel head but no loss_fn for the TP "
                            "step to set (see megarank/models/gpt.py)")
    vocab_start = layout.tp_rank * head.weight.shape[0]
    model.loss_fn = partial(vocab_parallel_cross_entropy, group=layout.tp_group, vocab_start=vocab_start)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)

"""The one table of parameter roles: what each parameter of megarank's models is, by name.

Every component that must know a parameter reads it here, never from the name itself:
    decay group   optim/groups.py builds the optimizer's groups from it (the paper's knob: attn vs mlp); the
                  attention weights also name their product (q, k -> 'qk'; v, o -> 'ov'), by which the attn
                  group splits into a qk and an ov group when optim.wd_qk and optim.wd_ov differ
    TP style      parallel/tensor_parallel.py shards by it; train/grad_norm.py and train/weight_norms.py count
                  a parameter once or per TP rank by it; checkpoints record it for the offline tools
    init          the models' reset_parameters initialise by it (init_by_role)
    analysis      the attention projections q, k, v, o: the per-head products W_Q,hᵀW_K,h and W_O,h W_V,h
                  (docs/paper.md, "Per-head products and how megarank measures them") are read from the
                  parameters with these roles (attention_layers)

ROLE_TABLE is ordered, first match wins; a parameter no row matches is an error (a renamed layer fails loudly
rather than silently changing its decay, bigscience Megatron-DeepSpeed #262). Adding a projection to the
block is one row here.

TP styles: 'column' (dim 0 split over TP ranks: output features, whole heads for q/k/v — whole K/V heads too
under grouped-query attention, so n_kv_heads must divide by TP), 'row' (dim 1 split:
input features), 'vocab' (dim 0 split by vocabulary id), 'replicated' (whole on every TP rank). A bias
follows its linear's output: column-split under a column-parallel linear, replicated under a row-parallel one
(added once, after the reduction).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import nn

from megarank.errors import MegarankError

DECAY_GROUPS = ("no_decay", "attn", "mlp", "other")
"""The roles' decay groups, in order. Each decayed group's strength is OptimConfig.wd_<group>."""
PRODUCTS = ("qk", "ov")
"""The attention products W_Qᵀ W_K and W_O W_V: the halves the attn group splits into (optim/groups.py)."""
TP_STYLES = ("column", "row", "vocab", "replicated")
INITS = ("normal", "residual", "zeros", "ones")
"""normal: N(0, init_std); residual: N(0, init_std / sqrt(2 n_layers)) for the projections that write into
the residual stream (GPT-2); zeros; ones (norm gains)."""
ATTENTION_ROLES = ("q", "k", "v", "o")


@dataclass(frozen=True)
class Role:
    """What a parameter is."""

    name: str
    """'q', 'k', 'v', 'o', 'mlp_in', 'mlp_out', 'norm', 'bias', 'embedding', 'position', 'head', ..."""
    decay_group: str
    tp_style: str
    init: str
    product: str | None = None
    """The attention weights' product, 'qk' (q, k) or 'ov' (v, o): their decay group when the attn group is
    split (optim.wd_qk / optim.wd_ov); None for every other parameter."""


@dataclass(frozen=True)
class RoleRow:
    pattern: str
    """Regular expression matched (re.fullmatch) against the parameter's full name."""
    role: Role


def _row(pattern: str, name: str, decay_group: str, tp_style: str, init: str, product: str | None = None) -> RoleRow:
    for value, allowed in ((decay_group, DECAY_GROUPS), (tp_style, TP_STYLES), (init, INITS)):
        if value not in allowed:  # a mistyped row fails at import, not as a silently replicated/undecayed tensor
            raise ValueError(f"roles.py row '{pattern}': '{value}' is not one of {allowed}")
    if (decay_group == "attn") != (product in PRODUCTS):  # an attn weight must say which half it splits into
        raise ValueError(f"roles.py row '{pattern}': decay group 'attn' needs a product {PRODUCTS}, and only it")
    return RoleRow(pattern, Role(name, decay_group, tp_style, init, product))


_BLOCK = r"(?:.*\.)?blocks\.\d+\."
ROLE_TABLE: tuple[RoleRow, ...] = (
    # attention: separate projections so that each head's factors can be read off (models/attention.py)
    _row(_BLOCK + r"attn\.q_proj\.weight", "q", "attn", "column", "normal", "qk"),
    _row(_BLOCK + r"attn\.k_proj\.weight", "k", "attn", "column", "normal", "qk"),
    _row(_BLOCK + r"attn\.v_proj\.weight", "v", "attn", "column", "normal", "ov"),
    _row(_BLOCK + r"attn\.o_proj\.weight", "o", "attn", "row", "residual", "ov"),
    _row(_BLOCK + r"attn\.(q|k|v)_proj\.bias", "bias", "no_decay", "column", "zeros"),
    _row(_BLOCK + r"attn\.o_proj\.bias", "bias", "no_decay", "replicated", "zeros"),
    # per-head q/k norms (model.qk_norm): one d_head gain shared by all heads, whole on every TP rank
    _row(_BLOCK + r"attn\.(q|k)_norm\.weight", "norm", "no_decay", "replicated", "ones"),
    # MLP
    _row(_BLOCK + r"mlp\.fc_in\.weight", "mlp_in", "mlp", "column", "normal"),
    _row(_BLOCK + r"mlp\.fc_out\.weight", "mlp_out", "mlp", "row", "residual"),
    _row(_BLOCK + r"mlp\.fc_in\.bias", "bias", "no_decay", "column", "zeros"),
    _row(_BLOCK + r"mlp\.fc_out\.bias", "bias", "no_decay", "replicated", "zeros"),
    # SwiGLU MLP (model.mlp=swiglu): gate and up split by hidden feature, down by its input, as fc_in / fc_out
    _row(_BLOCK + r"mlp\.(gate|up)_proj\.weight", "mlp_in", "mlp", "column", "normal"),
    _row(_BLOCK + r"mlp\.down_proj\.weight", "mlp_out", "mlp", "row", "residual"),
    _row(_BLOCK + r"mlp\.(gate|up)_proj\.bias", "bias", "no_decay", "column", "zeros"),
    _row(_BLOCK + r"mlp\.down_proj\.bias", "bias", "no_decay", "replicated", "zeros"),
    # norms: the blocks' ln_1, ln_2 and the final ln_f
    _row(r"(?:.*\.)?ln_\w+\.weight", "norm", "no_decay", "replicated", "ones"),
    _row(r"(?:.*\.)?ln_\w+\.bias", "bias", "no_decay", "replicated", "zeros"),
    # GPT: token embedding (vocab-parallel; the head is tied to it by default), positions, LM head
    _row(r"wte\.weight", "embedding", "other", "vocab", "normal"),
    _row(r"wpe\.weight", "position", "other", "replicated", "normal"),
    _row(r"lm_head\.weight", "head", "other", "vocab", "normal"),
    # ViT: patch embedding, class token, position table, class head (zero: uniform predictions at the start)
    _row(r"patch_embed\.proj\.weight", "patch_embed", "other", "replicated", "normal"),
    _row(r"patch_embed\.proj\.bias", "bias", "no_decay", "replicated", "zeros"),
    _row(r"cls_token", "cls_token", "other", "replicated", "normal"),
    _row(r"pos_embed", "position", "other", "replicated", "normal"),
    _row(r"head\.weight", "head", "other", "replicated", "zeros"),
    _row(r"head\.bias", "bias", "no_decay", "replicated", "zeros"),
)
_COMPILED = tuple((re.compile(row.pattern), row.role) for row in ROLE_TABLE)


def find_role(name: str) -> Role | None:
    """The role of the parameter called `name`, None where no row of ROLE_TABLE matches."""
    return next((role for pattern, role in _COMPILED if pattern.fullmatch(name)), None)


def role_of(name: str) -> Role:
    """The role of the parameter called `name` (model.named_parameters()' name); an error for a name no row of
    ROLE_TABLE matches."""
    role = find_role(name)
    if role is None:
        raise MegarankError(f"parameter '{name}' has no role: add a row for it to ROLE_TABLE in "
                            "megarank/models/roles.py")
    return role


def model_roles(model: nn.Module) -> dict[str, Role]:
    """{name: role} of every parameter (a tied parameter once, under its first name), in model order."""
    return {name: role_of(name) for name, _ in model.named_parameters()}


def init_by_role(model: nn.Module, *, std: float, n_layers: int) -> None:
    """Initialise every parameter of `model` as its role's init says, in named_parameters order (the order of
    the random draws, which fixes the weights a seed gives). 'residual' is N(0, std / sqrt(2 n_layers)): GPT-2's
    scaling of the projections that write into the residual stream, so its variance does not grow with depth."""
    residual_std = std / math.sqrt(2 * n_layers)
    for name, param in model.named_parameters():
        init = role_of(name).init
        if init == "zeros":
            nn.init.zeros_(param)
        elif init == "ones":
            nn.init.ones_(param)
        else:
            nn.init.normal_(param, mean=0.0, std=residual_std if init == "residual" else std)


_LAYER = re.compile(r"(?:.*\.)?blocks\.(\d+)\.")


def attention_layers(model: nn.Module) -> list[tuple[int, dict[str, nn.Parameter]]]:
    """[(layer, {'q': W_Q, 'k': W_K, 'v': W_V, 'o': W_O})] for every block of `model` in layer order: the
    parameters whose role is one of ATTENTION_ROLES. Names may carry a wrapper's prefix (module.blocks.0...);
    parameters of no role (a wrapper's own) are passed over. A layer lacking one of the four is an error."""
    layers: dict[int, dict[str, nn.Parameter]] = {}
    for name, param in model.named_parameters():
        role = find_role(name)
        if role is not None and role.name in ATTENTION_ROLES:
            layers.setdefault(int(_LAYER.match(name)[1]), {})[role.name] = param
    for layer, found in layers.items():
        if set(found) != set(ATTENTION_ROLES):
            raise MegarankError(f"attention layer {layer} has projections {sorted(found)}, expected all of "
                                f"{ATTENTION_ROLES} (megarank/models/roles.py)")
    return sorted(layers.items(), key=lambda item: item[0])


def split_dim(tp_style: str) -> int | None:
    """The dimension a TP style splits over ranks; None for 'replicated'."""
    return {"column": 0, "vocab": 0, "row": 1}.get(tp_style)


def attention_param_name(layer: int, role: str) -> str:
    """The name megarank's GPT and ViT give layer `layer`'s attention projection `role` ('q', 'k', 'v', 'o')."""
    return f"blocks.{layer}.attn.{role}_proj.weight"


def tensor_records(model: nn.Module, tp_size: int = 1) -> dict[str, dict]:
    """{name: {'role', 'decay_group', 'tp_style', 'shape'}} of every parameter, shape the global (TP=1) one, for
    a checkpoint's marker: the offline tools read a checkpoint by these records, without the model."""
    records = {}
    for name, param in model.named_parameters():
        role = role_of(name)
        shape = list(getattr(param, "ds_shape", param.shape))  # ZeRO-3 keeps the shape aside of an empty tensor
        dim = split_dim(role.tp_style)
        if dim is not None:
            shape[dim] *= tp_size
        records[name] = {"role": role.name, "decay_group": role.decay_group, "tp_style": role.tp_style,
                         "shape": shape}
    return records

"""The experiment config: nested dataclasses, one per component, a docstring on every field.

YAML files under configs/ are merged onto these classes by OmegaConf (see load.py), so an unknown key or a
value of the wrong type fails before anything runs. Each dataclass checks what it can see alone in
__post_init__. A run then fills what comes from its data (resolve.py), checks what spans sections at its world
size (validate.py) and freezes the result (frozen.py): from there on nothing changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from megarank.config.frozen import Freezable
from megarank.errors import MegarankError


WD_SCHEDULES = ("constant", "step", "linear", "cosine")
"""optim.wd_schedule's kinds (megarank/optim/decay.py computes them)."""
WD_SCHEDULE_GROUPS = ("attn", "qk", "ov", "mlp", "other")
"""What optim.wd_schedule_groups may name: the decayed groups of megarank/models/roles.py and the attention
products."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MegarankError(message)


@dataclass
class ModelConfig(Freezable):
    """The transformer: a decoder-only GPT or a ViT, both pre-LayerNorm on the same block."""

    family: str = "gpt"
    """'gpt' (causal language model on token shards) or 'vit' (image classifier)."""
    n_layers: int = 12
    """Number of transformer blocks."""
    d_model: int = 768
    """Residual stream width."""
    n_heads: int = 12
    """Attention heads per layer; d_head = d_model / n_heads."""
    d_ff: Optional[int] = None
    """MLP hidden width; None means 4 * d_model for the GELU MLP, and for SwiGLU 2/3 · 4 · d_model rounded up to
    a multiple of ffn_multiple (LLaMA's width: three matrices of it cost about what two of 4 · d_model do)."""
    norm: str = "layernorm"
    """'layernorm' (GPT-2: centred, with a bias when model.bias) or 'rmsnorm' (LLaMA: x / rms(x) · gain, no centring,
    no bias). The modules keep their names (ln_1, ln_2, ln_f) either way."""
    mlp: str = "gelu"
    """'gelu' (fc_in -> GELU -> fc_out, the exact erf GELU), 'gelu_tanh' (the same with GELU's tanh approximation:
    OpenAI's GPT-2, HF's 'gelu_new', so its checkpoints import exactly) or 'swiglu' (LLaMA:
    down_proj(silu(gate_proj(x)) * up_proj(x)))."""
    ffn_multiple: int = 256
    """SwiGLU only: its default width 2/3 · 4 · d_model is rounded up to a multiple of this (LLaMA's multiple_of);
    an explicit d_ff is taken as it is."""
    n_kv_heads: Optional[int] = None
    """Key/value heads per layer; None means n_heads (multi-head attention). Fewer gives grouped-query attention
    (Ainslie et al. 2023; 1: multi-query): query head h reads K/V head h // (n_heads / n_kv_heads), and k_proj,
    v_proj output n_kv_heads · d_head features. Must divide n_heads."""
    qk_norm: bool = False
    """Per-head RMSNorm on q and k before RoPE (attn.q_norm, attn.k_norm, a gain of size d_head shared by all
    heads), as Qwen3 and OLMo2. The rank tools then analyse W_Q,hᵀW_K,h of the raw weights, the norm sitting
    between them."""
    seq_len: int = 1024
    """Training context length in tokens."""
    max_positions: Optional[int] = None
    """Size of the learned position table; None means seq_len. seq_len may not exceed it."""
    vocab_size: Optional[int] = None
    """Vocabulary size; None takes the data's tokenizer size rounded up to a multiple of vocab_multiple."""
    vocab_multiple: int = 128
    """Pad the vocabulary to a multiple of this (Megatron's make-vocab-size-divisible-by): keeps the LM head's
    matmul aligned and lets tensor parallelism split the vocabulary evenly at any TP size dividing it. The
    padded rows are never targets."""
    position: str = "learned"
    """'learned' (GPT-2 absolute table) or 'rotary' (RoPE on q and k)."""
    rope_base: float = 10000.0
    """RoPE frequency base (position=rotary only)."""
    bias: bool = False
    """Biases in the linear layers and LayerNorms."""
    tie_embeddings: bool = True
    """LM head shares the token-embedding matrix."""
    dropout: float = 0.0
    """Dropout on attention probabilities and residual branches."""
    norm_eps: float = 1e-5
    """Epsilon of every norm (LayerNorm or RMSNorm, the per-head q/k norms included)."""
    init_std: float = 0.02
    """Std of the normal init; residual output projections get init_std / sqrt(2 * n_layers) (GPT-2)."""
    loss_chunk_tokens: int = 0
    """GPT: compute the LM head and the loss this many tokens at a time, recomputing each chunk in backward, so
    the full fp32 logits (micro_batch × seq_len × vocab) never exist at once (models/chunked_loss.py). 0: all
    at once, the default: the plain path stays bit for bit what it was, and small models, whose logits are
    small, skip the recomputed head matmul (~1/3 more head FLOPs). With chunks of C tokens the fp32 logits take
    4·C·vocab bytes instead of 4·(micro_batch·seq_len)·vocab."""
    attn_backend: str = "auto"
    """'auto' (flash_attn if installed and on GPU, else SDPA), 'flash', 'sdpa' or 'math'."""
    image_size: int = 224
    """ViT: input resolution (square)."""
    patch_size: int = 16
    """ViT: patch side in pixels."""
    in_channels: int = 3
    """ViT: image channels."""
    n_classes: Optional[int] = None
    """ViT: number of classes; None takes it from the data."""
    pooling: str = "cls"
    """ViT: 'cls' (class token) or 'mean' (average of the patch tokens)."""
    patch_embed: str = "conv"
    """ViT: 'conv' (strided convolution) or 'linear' (flattened patches through a linear layer)."""

    def __post_init__(self) -> None:
        _require(self.family in ("gpt", "vit"), f"model.family must be 'gpt' or 'vit', got '{self.family}'")
        _require(self.pooling in ("cls", "mean"), f"model.pooling must be 'cls' or 'mean', got '{self.pooling}'")
        _require(self.patch_embed in ("conv", "linear"),
                 f"model.patch_embed must be 'conv' or 'linear', got '{self.patch_embed}'")
        _require(self.image_size % self.patch_size == 0,
                 f"model.image_size={self.image_size} is not a multiple of model.patch_size={self.patch_size}")
        _require(self.position in ("learned", "rotary"),
                 f"model.position must be 'learned' or 'rotary', got '{self.position}'")
        _require(self.attn_backend in ("auto", "flash", "sdpa", "math"),
                 f"model.attn_backend must be auto|flash|sdpa|math, got '{self.attn_backend}'")
        for name in ("n_layers", "d_model", "n_heads", "seq_len"):
            _require(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}")
        _require(self.norm in ("layernorm", "rmsnorm"), f"model.norm must be 'layernorm' or 'rmsnorm', got '{self.norm}'")
        _require(self.mlp in ("gelu", "gelu_tanh", "swiglu"),
                 f"model.mlp must be 'gelu', 'gelu_tanh' or 'swiglu', got '{self.mlp}'")
        _require(self.ffn_multiple > 0, f"model.ffn_multiple must be positive, got {self.ffn_multiple}")
        if self.n_kv_heads is not None:
            _require(0 < self.n_kv_heads <= self.n_heads and self.n_heads % self.n_kv_heads == 0,
                     f"model.n_kv_heads={self.n_kv_heads} does not divide model.n_heads={self.n_heads}; pick a divisor "
                     "of n_heads (or null for one K/V head per query head)")
        _require(self.d_model % self.n_heads == 0,
                 f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                 "pick n_heads that divides d_model")
        if self.max_positions is not None:
            _require(self.seq_len <= self.max_positions,
                     f"model.seq_len={self.seq_len} is beyond the position table "
                     f"(model.max_positions={self.max_positions}); lower seq_len or raise max_positions")
        _require(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        _require(self.loss_chunk_tokens >= 0,
                 f"model.loss_chunk_tokens must be >= 0 (0: off), got {self.loss_chunk_tokens}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """The K/V head count: n_kv_heads, or n_heads where it is None."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            return -(-(2 * 4 * self.d_model // 3) // self.ffn_multiple) * self.ffn_multiple
        return 4 * self.d_model


@dataclass
class DataConfig(Freezable):
    """Where the token shards come from."""

    path: Optional[str] = None
    """Directory made by tools/preprocess.py (with train/ and optionally val/ shards); None uses the embedded
    default corpus: the running Python's standard-library source, tokenized on first use and cached."""
    tokenizer: Optional[str] = None
    """The SentencePiece .model the shards under data.path must have been made with (checked against the
    tokenizer_sha256 their index.json records); None checks only that train/ and val/ share one tokenizer. The
    embedded corpus is always checked against the tokenizer built with it."""
    tokenizer_vocab: int = 4096
    """Vocabulary of the sentencepiece model trained for the embedded corpus."""
    cache_dir: str = "~/.cache/megarank"
    """Where the embedded corpus' tokenizer and shards are cached."""
    image_source: str = "digits"
    """ViT: 'digits' (scikit-learn's 1,797 8×8 handwritten digits, shipped with the package, fixed split), an
    ImageNet-style folder with train/ and val/ (one subfolder per class), or a Hugging Face `datasets` source
    (local parquet/arrow files, or a hub name when online) with image and label columns."""
    image_key: str = "image"
    """ViT, `datasets` sources: the image column."""
    label_key: str = "label"
    """ViT, `datasets` sources: the label column."""
    augment: bool = True
    """ViT: random-resized crop and horizontal flip for training (eval: resize + centre crop)."""
    randaugment: bool = False
    """ViT: add RandAugment (torchvision) to the training transform."""
    crop_scale_min: float = 0.08
    """ViT: smallest area fraction of the random-resized crop."""
    hflip: bool = True
    """ViT: random horizontal flips (off for digits, where a flip changes the class)."""
    eval_crop_ratio: float = 0.875
    """ViT: evaluation resizes to image_size / eval_crop_ratio, then centre-crops image_size (1.0: no crop)."""
    num_workers: int = 0
    """ViT: DataLoader worker processes decoding images."""


@dataclass
class OptimConfig(Freezable):
    """AdamW (or Adam + L2) with separate decay per parameter role, and the LR schedule."""

    lr: float = 1e-3
    """Peak learning rate."""
    warmup_start_lr: float = 1e-6
    """Learning rate at step 0; it rises linearly to lr over warmup_steps."""
    warmup_steps: int = 8000
    """Linear warm-up length in optimizer steps."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at min_lr_ratio * lr at train.max_steps."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.95
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    wd_attn: float = 0.1
    """Weight decay of the attention weights W_Q, W_K, W_V, W_O (of a product whose optim.wd_qk / wd_ov is
    null)."""
    wd_mlp: float = 0.1
    """Weight decay of the MLP weights fc_in, fc_out."""
    wd_other: float = 0.1
    """Weight decay of the token/position embeddings and the LM head."""
    wd_qk: Optional[float] = None
    """Weight decay of W_Q and W_K (the product W_Qᵀ W_K); None means optim.wd_attn. When it differs from the
    decay of W_V, W_O (optim.wd_ov), or the decay schedule covers one of the two only, the attn group splits
    into a qk and an ov group (a checkpoint with one attn group then resumes only through train.init_from)."""
    wd_ov: Optional[float] = None
    """Weight decay of W_V and W_O (the product W_O W_V); None means optim.wd_attn. See optim.wd_qk."""
    wd_schedule: str = "constant"
    """The decay strength over training, as a multiplier of each covered group's decay: 'constant' (1);
    'step' (1 for the first wd_schedule_start optimizer steps, wd_final_ratio from then on: 0 switches the
    decay off at that step); 'linear' or 'cosine' (1 until wd_schedule_start, then linearly or along a half
    cosine to wd_final_ratio at wd_schedule_end, held after it)."""
    wd_schedule_start: int = 0
    """Optimizer steps taken before the schedule's change begins (0-based: 4 changes the 5th step on)."""
    wd_schedule_end: Optional[int] = None
    """'linear' and 'cosine': the step at which the multiplier reaches wd_final_ratio; None means
    train.max_steps. Unused by 'constant' and 'step'."""
    wd_final_ratio: float = 0.0
    """The multiplier the schedule ends at ('step': the one it switches to)."""
    wd_schedule_groups: List[str] = field(default_factory=lambda: ["attn", "mlp", "other"])
    """The decay groups the schedule applies to (any of attn, qk, ov, mlp, other; attn covers qk and ov); the
    others keep their decay constant. E.g. [attn] switches attention's decay off alone."""
    decoupled: bool = True
    """True: AdamW, decay applied to the weights (w -= lr * wd * w). False: Adam with L2 added to the gradient
    (g += wd * w) per group."""
    grad_clip: float = 1.0
    """Clip gradients to this global norm (0 disables)."""
    implementation: str = "auto"
    """The Adam kernel: 'torch' (torch.optim's Adam(W): bit-exact resume, nothing to build), 'fused'
    (DeepSpeed's FusedAdam CUDA op, JIT-built on first use) or 'auto' (fused on GPU, torch on CPU)."""

    def __post_init__(self) -> None:
        for name in ("wd_attn", "wd_mlp", "wd_other", "wd_qk", "wd_ov"):
            value = getattr(self, name)
            _require(value is None or value >= 0, f"optim.{name} must be >= 0, got {value}")
        _require(self.wd_schedule in WD_SCHEDULES,
                 f"optim.wd_schedule must be one of {'|'.join(WD_SCHEDULES)}, got '{self.wd_schedule}'")
        _require(self.wd_schedule_start >= 0, f"optim.wd_schedule_start must be >= 0, got {self.wd_schedule_start}")
        _require(self.wd_schedule_end is None or self.wd_schedule_end > self.wd_schedule_start,
                 f"optim.wd_schedule_end ({self.wd_schedule_end}) must come after optim.wd_schedule_start "
                 f"({self.wd_schedule_start}); or null for train.max_steps")
        _require(self.wd_final_ratio >= 0, f"optim.wd_final_ratio must be >= 0, got {self.wd_final_ratio}")
        unknown = [g for g in self.wd_schedule_groups if g not in WD_SCHEDULE_GROUPS]
        _require(not unknown, f"optim.wd_schedule_groups: {unknown} not among {list(WD_SCHEDULE_GROUPS)}")
        _require(self.lr > 0, f"optim.lr must be positive, got {self.lr}")
        _require(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _require(self.implementation in ("auto", "torch", "fused"),
                 f"optim.implementation must be auto|torch|fused, got '{self.implementation}'")


@dataclass
class TrainConfig(Freezable):
    """The loop: batch sizes, length, logging, evaluation, precision."""

    max_steps: int = 1000
    """Optimizer steps to train for (the schedule ends here)."""
    micro_batch: int = 8
    """Sequences per process per forward/backward."""
    global_batch: int = 128
    """Sequences per optimizer step over all processes; gradient accumulation fills the gap."""
    run_dir: str = "runs/default"
    """Where config.yaml, metrics.jsonl, TensorBoard events and (by default) checkpoints go."""
    resume: str = "auto"
    """'auto': latest complete checkpoint in checkpoint.dir if any; 'none': start fresh (refuses a run dir
    that already has checkpoints); or a path to one checkpoint tag directory."""
    init_from: Optional[str] = None
    """Start from these weights instead of a random init: a megarank GPT checkpoint (a global_step<N> tag, or a
    run or checkpoint dir, whose newest complete tag is read, at any TP/DP/ZeRO layout) or a local Hugging Face
    directory (config.json + model.safetensors: GPT-2, or the LLaMA family — Llama, Mistral, Qwen2, Qwen3;
    megarank/hf/layouts.py). Weights only: a new optimizer, LR schedule and data position. The model's shape
    keys come from the source; one the config sets to another value is an error (a key left at its schema
    default counts as not set). Resume wins: when the run already has a checkpoint it resumes from it, and
    init_from only supplies the model keys (the source must still be readable). None: a random init."""
    log_every: int = 1
    """Write a metrics record every this many steps."""
    eval_every: int = 100
    """Validation every this many steps (and at the end); 0 disables."""
    eval_batches: int = 8
    """Size of one validation pass in global batches (Megatron's eval-iters): the first eval_batches ×
    global_batch validation sequences (images), or the whole split if it is smaller, shared out over the
    data-parallel ranks — the same set, and so the same val_loss, at every parallel layout. A resume with
    another global_batch validates on another number of sequences."""
    precision: str = "auto"
    """'auto' (bf16 on GPU, fp32 on CPU), 'bf16' or 'fp32'."""
    progress: bool = True
    """Show a progress bar on rank 0."""
    label_smoothing: float = 0.0
    """ViT: label smoothing of the training cross-entropy."""
    spike_factor: float = 3.0
    """Warn (log line and a 'loss_spike' record in metrics.jsonl) when a step's loss exceeds this many times the
    mean of the previous spike_window steps; training goes on. 0 disables. A non-finite loss or gradient norm
    is not a spike: it stops the run before that step is saved."""
    spike_window: int = 50
    """Steps in the running mean that loss spikes are measured against; nothing is flagged until it is full."""
    activation_checkpointing: str = "none"
    """'none', 'full' (every block recomputes its forward in backward: activation memory of about one block
    plus the block inputs, ~1/3 more compute) or 'selective' (every activation_checkpointing_every-th block).
    Same losses and gradients as 'none', dropout included (both RNG streams are replayed)."""
    compile: bool = False
    """torch.compile every transformer block (fullgraph: a graph break is an error, and so is a recompilation
    beyond the train and eval graphs). Off by default: it paid neither on CPU nor consistently on one H100 at
    GPT-2 small (docs/performance.md); measure your model with `make bench`."""
    activation_checkpointing_every: int = 2
    """With 'selective': checkpoint blocks 0, k, 2k, ... (k = this). Recomputing only the attention core, the
    other selective mode Megatron has, would save nothing: flash/SDPA attention never stores the T×T scores."""

    def __post_init__(self) -> None:
        _require(self.resume != "", "train.resume must be 'auto', 'none' or a checkpoint path")
        _require(self.spike_factor == 0 or self.spike_factor > 1,
                 f"train.spike_factor must be 0 (off) or above 1, got {self.spike_factor}")
        _require(self.spike_window > 0, f"train.spike_window must be positive, got {self.spike_window}")
        _require(self.precision in ("auto", "bf16", "fp32"),
                 f"train.precision must be auto|bf16|fp32, got '{self.precision}'")
        _require(self.activation_checkpointing in ("none", "full", "selective"),
                 f"train.activation_checkpointing must be none|full|selective, got '{self.activation_checkpointing}'")
        _require(self.activation_checkpointing_every > 0,
                 f"train.activation_checkpointing_every must be positive, got {self.activation_checkpointing_every}")
        for name in ("max_steps", "micro_batch", "global_batch", "log_every", "eval_batches"):
            _require(getattr(self, name) > 0, f"train.{name} must be positive, got {getattr(self, name)}")


@dataclass
class ZeroConfig(Freezable):
    """DeepSpeed ZeRO sharding of optimizer state (1), gradients (2) and parameters (3)."""

    stage: int = 1
    """ZeRO stage 0-3."""

    def __post_init__(self) -> None:
        _require(self.stage in (0, 1, 2, 3), f"zero.stage must be 0, 1, 2 or 3, got {self.stage}")


@dataclass
class CheckpointConfig(Freezable):
    """Sharded DeepSpeed checkpoints."""

    every: int = 500
    """Save every this many steps (and always at the end); 0 saves only at the end."""
    dir: str = "${train.run_dir}/checkpoints"
    """Checkpoint directory; one global_step<N>/ tag per save."""
    keep_last: int = 0
    """Keep the keep_last newest complete checkpoints (and keep_every's), removing older ones after each save
    once the new one is complete; 0 keeps all (as torchtitan's keep_latest_k). Never removed: the one just
    saved, which `latest` names, and tags newer than it (from an attempt that went further)."""
    keep_every: int = 0
    """With keep_last, also keep for good every checkpoint whose step is a multiple of this (snapshots for rank
    over training); a multiple of checkpoint.every. 0: none beyond keep_last."""

    def __post_init__(self) -> None:
        _require(self.every >= 0, f"checkpoint.every must be >= 0, got {self.every}")
        _require(self.keep_last >= 0, f"checkpoint.keep_last must be >= 0 (0 keeps all), got {self.keep_last}")
        _require(self.keep_every >= 0, f"checkpoint.keep_every must be >= 0 (0 keeps none), got {self.keep_every}")
        _require(not (self.keep_every and self.every) or self.keep_every % self.every == 0,
                 f"checkpoint.keep_every={self.keep_every} is not a multiple of checkpoint.every={self.every}: only "
                 "steps that are multiples of both are saved, fewer than asked for; use a multiple of "
                 f"{self.every}")


@dataclass
class AnalysisConfig(Freezable):
    """Attention rank logged during training (the same metrics as megarank-rank, means per layer)."""

    every: int = 100
    """Log the mean rank of W_Q,h^T W_K,h and W_O,h W_V,h per layer, and the Frobenius norm of each weight-decay
    group's parameters (weight_norm/attn, /mlp, /other, /no_decay, /total), every this many steps (and at the
    end) to TensorBoard and metrics.jsonl; 0 disables."""
    rtol: float = 0.01  # megarank-rank's default (analysis/spectra.py DEFAULT_RTOL); a test keeps them equal
    """A singular value counts towards the rank when it exceeds rtol times the head's largest."""

    def __post_init__(self) -> None:
        _require(self.every >= 0, f"analysis.every must be >= 0, got {self.every}")
        _require(0 < self.rtol < 1, f"analysis.rtol must be in (0, 1), got {self.rtol}")


@dataclass
class ParallelConfig(Freezable):
    """Process layout. The data-parallel size is world_size / tp."""

    tp: int = 1
    """Tensor-parallel size (Megatron-style, inside a node)."""
    timeout_minutes: float = 10.0
    """How long the start-up rendezvous and each collective wait for the other ranks before the job fails (the
    process-group timeout; 10 as DeepSpeed's and Megatron's default): the backstop that ends a job whose rank
    died without the others noticing, e.g. under NCCL. Raise it where one rank works alone for longer while
    the others wait, such as rank 0 converting a large checkpoint for a resume at another layout."""

    def __post_init__(self) -> None:
        _require(self.tp >= 1, f"parallel.tp must be >= 1, got {self.tp}")
        _require(self.timeout_minutes > 0, f"parallel.timeout_minutes must be positive, got {self.timeout_minutes}")


@dataclass
class ExperimentConfig(Freezable):
    """One experiment: every section, composed from configs/ parts and CLI overrides."""

    seed: int = 1234
    """Seed of the model init and the data order."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

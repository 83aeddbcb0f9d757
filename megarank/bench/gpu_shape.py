"""What a GPU trains when `make bench` and `make gpu-check` measure it: GPT-2 small (12 layers × 768, 12 heads)
at 1024 tokens in bf16 on the embedded corpus (configs/default.yaml plus these overrides), 16 sequences per
GPU per step."""

from __future__ import annotations

DEFAULT_CONFIG = "configs/default.yaml"
GPT2_SMALL_1024 = ("model.n_layers=12", "model.d_model=768", "model.n_heads=12", "model.seq_len=1024",
                   "train.micro_batch=16", "train.precision=bf16")


# The LLaMA block at the same size (this config plus gpu_overrides plus these): RMSNorm, SwiGLU, RoPE, 4 K/V
# heads for 12 query heads, QK-norm.
LLAMA_CONFIG = "configs/llama_cpu_small.yaml"
LLAMA_OVERRIDES = ("model.n_kv_heads=4", "model.qk_norm=true")


def gpu_overrides(n_gpus: int) -> list[str]:
    """The overrides for n_gpus data-parallel GPUs: one micro batch each, no gradient accumulation."""
    return [*GPT2_SMALL_1024, f"train.global_batch={16 * n_gpus}"]

"""megarank: GPT/ViT pretraining with separate attention and MLP weight decay, and the rank tools to see
what that decay does to W_Q^T W_K and W_O W_V (Kobayashi et al., "Weight decay induces low-rank attention
layers", NeurIPS 2024)."""

__version__ = "0.1.0"

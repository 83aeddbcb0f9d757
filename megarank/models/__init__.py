"""Models in plain PyTorch: attention backends, the shared transformer block, GPT (and ViT)."""

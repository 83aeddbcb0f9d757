"""Training: process group, DeepSpeed engine, the loop, checkpoints, metrics and preemption."""

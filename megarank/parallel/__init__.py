"""Parallelism: the TP × DP layout; tensor-parallel layers are applied to a built model as a separate step."""

"""Optimizer pieces megarank adds around DeepSpeed's AdamW: role-based decay groups and the LR schedule."""

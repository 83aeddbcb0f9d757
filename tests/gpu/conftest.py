"""The tests that need a CUDA GPU: `make gpu-check` runs them (tools/gpu_check.py). A machine without one does
not collect them, so the CPU suite reports no skips for a GPU it cannot have."""

import torch

if not torch.cuda.is_available():
    collect_ignore_glob = ["test_*.py"]

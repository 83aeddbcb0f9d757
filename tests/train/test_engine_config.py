"""The DeepSpeed config megarank hands over: which Adam kernel optim.implementation picks on each device, and the
CUDA arch list rewritten only where DeepSpeed's JIT builder could not parse it."""

from __future__ import annotations

import pytest
import torch

from megarank.config import ExperimentConfig
from megarank.errors import MegarankError
from megarank.train import engine
from megarank.train.engine import arch_list_deepspeed_can_parse, deepspeed_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("implementation, device, torch_adam", [
    ("auto", CPU, True), ("auto", CUDA, False), ("torch", CPU, True), ("torch", CUDA, True), ("fused", CUDA, False)])
def test_adam_kernel_per_device(implementation, device, torch_adam):
    cfg = ExperimentConfig()
    cfg.optim.implementation = implementation
    ds = deepspeed_config(cfg, grad_accum=1, device=device)
    assert ds["optimizer"]["params"]["torch_adam"] is torch_adam


def test_fused_on_cpu_is_one_line():
    cfg = ExperimentConfig()
    cfg.optim.implementation = "fused"
    with pytest.raises(MegarankError, match="needs a CUDA GPU"):
        deepspeed_config(cfg, grad_accum=1, device=CPU)


def test_unknown_implementation_is_refused():
    with pytest.raises(MegarankError, match="auto|torch|fused"):
        ExperimentConfig(optim=type(ExperimentConfig().optim)(implementation="apex"))


@pytest.mark.parametrize("archs, expected", [("9.0a", "9.0"), ("8.0;9.0a;10.0a+PTX", "9.0"), ("8.0;9.0", "8.0;9.0"),
                                             ("", "")])
def test_arch_list_deepspeed_can_parse(archs, expected, monkeypatch):
    """An H100 machine: '9.0a' entries become its own capability; a list DeepSpeed reads stays as it is."""
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", archs)
    monkeypatch.setattr(engine.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(engine.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(engine.torch.cuda, "get_device_capability", lambda i: (9, 0))
    arch_list_deepspeed_can_parse()
    assert engine.os.environ["TORCH_CUDA_ARCH_LIST"] == expected

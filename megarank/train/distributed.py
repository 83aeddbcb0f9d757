"""Process-group start-up: torch.distributed through DeepSpeed (NCCL on GPU, gloo on CPU).

Works under the DeepSpeed launcher, torchrun, SLURM-style env, or a plain `python` (a world of one).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

import torch

# DeepSpeed JIT-builds a CPU comm op on first use; keep the build inside the active environment (make install
# builds it once there) instead of a per-user cache that every fresh machine pays for again.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> World:
    """Initialise the default process group once and pick this process's device."""
    import deepspeed

    if "RANK" not in os.environ:  # plain `python`: a world of one on this host
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return World(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                 local_rank=local_rank, device=device)

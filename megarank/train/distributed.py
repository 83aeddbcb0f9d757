"""Process-group start-up: torch.distributed through DeepSpeed (NCCL on GPU, gloo on CPU).

Works under the DeepSpeed launcher, torchrun, SLURM-style env, or a plain `python` (a world of one).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from megarank.config.schema import ParallelConfig

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


def init_distributed(timeout_minutes: float = ParallelConfig.timeout_minutes) -> World:
    """Initialise the default process group once and pick this process's device.

    timeout_minutes (parallel.timeout_minutes): how long the start-up rendezvous and every collective wait
    for the other ranks before failing — the backstop that ends a job whose rank died unnoticed."""
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
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   timeout=timedelta(minutes=timeout_minutes))
        if device.type == "cpu":
            release_shm_name()
    return World(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                 local_rank=local_rank, device=device)


def shm_buffer_path(rank: int) -> Path:
    """Where DeepSpeed's CPU shared-memory all-reduce (its shm comm op, csrc/cpu/comm/shm.cpp) puts this rank's
    buffer: named by user, MASTER_ADDR and MASTER_PORT, so each job's processes find each other's."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")  # "" as shm.cpp reads them
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def release_shm_name() -> None:
    """Unlink this rank's shm all-reduce buffer name once every rank has mapped every buffer.

    DeepSpeed creates a ~69 MB /dev/shm file per process and never unlinks it, so each CPU run leaves its
    processes' buffers in RAM (tmpfs) after exit: a machine that runs many jobs, or the test suite, fills up and
    meets the OOM killer. Each rank maps all its peers' buffers inside init_distributed and never opens them by
    name again, so after a barrier the names can go; the mappings stay valid until the processes exit, and then
    the memory is freed, even after a SIGKILL."""
    torch.distributed.barrier()
    shm_buffer_path(torch.distributed.get_rank()).unlink(missing_ok=True)

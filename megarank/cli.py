"""Console entry points, thin: parse arguments, build the config, call the package.

User errors (MegarankError) print one line, `error: ...`, and exit 2 — no traceback. With several processes
the line names the rank and host that failed, and no rank is left waiting for it (megarank/train/failures.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings


def _setup_logging() -> None:
    is_main = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="[megarank] %(message)s")
    for noisy in ("DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # DeepSpeed internals call deprecated torch APIs; the warnings are not actionable for a user
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*is deprecated.*")


def _close_process_group() -> None:
    """Every rank finished: leave together and tear the group down here, not in interpreter shutdown, where
    gloo's teardown can abort ('terminate called without an active exception') and fail a finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def train_process() -> None:
    """The training process's entry (`megarank-train`, `python -m megarank.train`, what launchers start on every
    rank): train_main, then the process ends at once with its exit status, output flushed and every file closed.
    Skipping the interpreter's shutdown is deliberate: a rank of a finished multi-process run was seen to abort
    there ('terminate called without an active exception', exit -6) after the process group was torn down,
    failing a run whose checkpoints and records were complete."""
    code = train_main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def train_main(argv: list[str] | None = None) -> int:
    """megarank-train CONFIG.yaml [key=value ...]"""
    parser = argparse.ArgumentParser(prog="megarank-train", description="Pretrain a GPT with DeepSpeed.")
    parser.add_argument("config", help="experiment YAML, e.g. configs/default.yaml")
    parser.add_argument("overrides", nargs="*", help="OmegaConf dot-list overrides, e.g. optim.wd_attn=0")
    # the DeepSpeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _setup_logging()
    from megarank.config import load_config
    from megarank.train.failures import fail

    try:
        cfg = load_config(args.config, args.overrides)
        from megarank.train.loop import train

        last = train(cfg)
        _close_process_group()
    except Exception as err:  # a user error, or a bug on one rank that the others must not wait for
        return fail(err)
    if last and os.environ.get("RANK", "0") == "0":
        # the per-layer ranks stay in metrics.jsonl and TensorBoard; the model-wide means are shown
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items() if "/layer" not in k}
        logging.getLogger("megarank").info("done: %s", shown)
    return 0


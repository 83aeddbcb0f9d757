"""Console entry points, thin: parse arguments, build the config, call the package.

User errors (MegarankError) print one line, `error: ...`, and exit 2 — no traceback.
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


def _fail(err: Exception) -> int:
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {err}", file=sys.stderr)
    return 2


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
    from megarank.errors import MegarankError

    try:
        cfg = load_config(args.config, args.overrides)
        from megarank.train.loop import train

        last = train(cfg)
    except MegarankError as err:
        return _fail(err)
    if last and os.environ.get("RANK", "0") == "0":
        # the per-layer ranks stay in metrics.jsonl and TensorBoard; the model-wide means are shown
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items() if "/layer" not in k}
        logging.getLogger("megarank").info("done: %s", shown)
    return 0


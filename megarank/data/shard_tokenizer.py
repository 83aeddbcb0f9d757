"""Refuse token shards made with another tokenizer than the run's.

Every shard index records the sha256 of the SentencePiece model that made it (tools/preprocess.py and the
embedded corpus both write `tokenizer_sha256`). Token ids from another tokenizer are valid integers below the
vocabulary size, so nothing else would notice: the model would train, and validate, on scrambled text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from megarank.data.shards import TokenShards
from megarank.data.tokenizer import model_sha256
from megarank.errors import MegarankError

log = logging.getLogger("megarank")


def check_shards_tokenizer(shards: list[TokenShards], tokenizer: str | Path | None) -> None:
    """Every shard directory must have been made with `tokenizer` (a .model file), or, when the run names none,
    with the same tokenizer as the first (training) directory."""
    if tokenizer is not None:
        tokenizer = Path(tokenizer).expanduser()
        if not tokenizer.is_file():
            raise MegarankError(f"data.tokenizer '{tokenizer}' not found; point it at the .model file the shards "
                                "were made with, or unset it")
        expected, name = model_sha256(tokenizer), str(tokenizer)
    else:
        expected, name = shards[0].tokenizer_sha256, _made_with(shards[0])
    for directory in shards:
        recorded = directory.tokenizer_sha256
        if recorded is None or expected is None:
            log.warning("%s records no tokenizer_sha256; cannot check that it was made with the run's tokenizer",
                        directory.directory if recorded is None else shards[0].directory)
            return
        if recorded != expected:
            raise MegarankError(
                f"{directory.directory} was made with tokenizer {_made_with(directory)} (sha256 {recorded[:12]}), "
                f"this run uses {name} (sha256 {expected[:12]}); re-tokenize it with tools/preprocess.py "
                f"--tokenizer {name}, or train with the tokenizer it was made with")


def _made_with(shards: TokenShards) -> str:
    """The tokenizer's path as the index records it (tools/preprocess.py), or where the embedded corpus keeps it."""
    beside = shards.directory.parent / "tokenizer.model"
    return shards.meta.get("tokenizer") or (str(beside) if beside.is_file() else "an unrecorded tokenizer")

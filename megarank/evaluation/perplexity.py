"""Perplexity over every token of a split, and evaluate_checkpoint(), which finds the model and the data.

The split's shards are one token stream of N tokens (TokenShards), cut into windows of at most T = seq_len
(the run's own) inputs with their next-token targets:

    window i: inputs tokens[i·T, i·T + L_i), targets tokens[i·T + 1, i·T + L_i + 1),  L_i = min(T, N − 1 − i·T)

The targets tile positions 1 .. N − 1, so each token but the first is predicted exactly once (N − 1
predictions; only the last window may be shorter). Like training's windows (text_dataset.py), each starts
without context and ignores document boundaries. They depend on the data and seq_len only, never on the layout
the checkpoint trained at, the batch size or the device.
    loss = Σ NLL / (N − 1), accumulated in float64;  ppl = exp(loss)

Which data: --data DIR (a tools/preprocess.py output or a stdlib cache dir), else what the run trained on (its
config's data.path, or the embedded stdlib corpus in its cache_dir). A stdlib corpus gains its test split on
first use (stdlib_corpus.ensure_stdlib_test_split); other data must hold <DIR>/<split>/index.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from megarank.data.shards import TokenShards
from megarank.data.stdlib_corpus import (StdlibDataset, ensure_stdlib_dataset, ensure_stdlib_test_split,
                                         stdlib_dataset_location)
from megarank.errors import MegarankError
from megarank.evaluation.load import eval_model_config, load_gpt, open_checkpoint

SPLITS = ("val", "test")


def token_windows(n_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, length) of every window: inputs tokens[start, start + length), targets one further on."""
    return [(start, min(seq_len, n_tokens - 1 - start)) for start in range(0, n_tokens - 1, seq_len)]


@torch.inference_mode()
def perplexity(model: torch.nn.Module, shards: TokenShards, *, seq_len: int, batch_size: int = 8,
               device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """{'tokens': N − 1, 'loss': mean NLL in nats, 'ppl'} of `model` (logits from model(idx)) on every token."""
    if shards.n_tokens < 2:
        raise MegarankError(f"'{shards.directory}' holds {shards.n_tokens} token(s); perplexity needs at least 2")
    windows = token_windows(shards.n_tokens, seq_len)
    # full windows in batches of batch_size; the shorter last one, if any, alone (no padding, no masks)
    full = [w for w in windows if w[1] == seq_len]
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[w] for w in windows if w[1] != seq_len]
    total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per batch
    count = 0
    with tqdm(total=shards.n_tokens - 1, desc=f"eval {shards.directory.name}", unit="tok", unit_scale=True,
              disable=not progress, dynamic_ncols=True) as bar:
        for batch in batches:
            length = batch[0][1]
            rows = np.stack([shards.read(start, length + 1) for start, _ in batch])  # (B, L+1)
            rows = torch.from_numpy(rows).to(device, non_blocking=True)
            x, y = rows[:, :-1], rows[:, 1:]  # (B, L)
            logits = model(x).float()  # (B, L, vocab)
            nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")  # (B·L,)
            total += nll.double().sum()
            count += y.numel()
            bar.update(y.numel())
    assert count == shards.n_tokens - 1, (count, shards.n_tokens)
    loss = total.item() / count
    return {"tokens": count, "loss": loss, "ppl": math.exp(loss)}


def _is_stdlib_cache(root: Path) -> bool:
    index = root / "train" / "index.json"
    try:
        return (root / "tokenizer.model").is_file() and json.loads(index.read_text()).get("source") == "python-stdlib"
    except (OSError, ValueError):
        return False


def split_dir(data_cfg: dict, split: str, data: str | Path | None, *, progress: bool) -> Path:
    """<data root>/<split> for --data or, without it, the run's training data (a stdlib corpus is built if its
    cache is gone, and gains its test split on first use)."""
    if split not in SPLITS:
        raise MegarankError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    if data is None and data_cfg.get("path") is None:
        built = ensure_stdlib_dataset(Path(data_cfg["cache_dir"]).expanduser(), int(data_cfg["tokenizer_vocab"]),
                                      show_progress=progress)
        root = built.train_dir.parent
    else:
        named = "--data" if data is not None else "the checkpoint's data.path"
        root = Path(data if data is not None else data_cfg["path"]).expanduser()
        if not root.is_dir():
            raise MegarankError(f"{named} '{root}' is not a directory; pass --data DIR with {split}/ token shards")
    if split == "test" and _is_stdlib_cache(root):
        ensure_stdlib_test_split(StdlibDataset(root / "tokenizer.model", root / "train", root / "val"),
                                 show_progress=progress)
    if not (root / split / "index.json").is_file():
        raise MegarankError(f"'{root}' has no {split} split (no {split}/index.json); tokenize one with "
                            f"tools/preprocess.py, or pass --data DIR holding {split}/")
    return root / split


def _training_index(data_cfg: dict) -> dict | None:
    """The index.json of the shards the run trained on, if they are still on disk (nothing is built)."""
    if data_cfg.get("path") is not None:
        index = Path(data_cfg["path"]).expanduser() / "train" / "index.json"
    else:
        try:
            location = stdlib_dataset_location(Path(data_cfg["cache_dir"]).expanduser(),
                                               int(data_cfg["tokenizer_vocab"]))
        except MegarankError:  # no stdlib sources on this machine
            return None
        index = location.train_dir / "index.json"
    try:
        return json.loads(index.read_text())
    except (OSError, ValueError):
        return None


def check_tokenizer(shards: TokenShards, data_cfg: dict, vocab_size: int, *, other_data: bool) -> None:
    """Refuse data the model cannot read: ids beyond its vocabulary, or (other_data: not the run's own data
    root) another tokenizer than its training data's, compared by the tokenizer_sha256 both index files record
    when the training data is still on disk."""
    where = shards.directory / "index.json"
    if shards.vocab_size > vocab_size:
        raise MegarankError(f"'{where}' was tokenized with a {shards.vocab_size}-token vocabulary, the model has "
                            f"{vocab_size}: another tokenizer than the run's; re-tokenize the data with the run's")
    trained = _training_index(data_cfg) if other_data else None
    if trained is None:
        return
    ours, theirs = shards.meta.get("tokenizer_sha256"), trained.get("tokenizer_sha256")
    if trained.get("vocab_size") != shards.vocab_size or (ours and theirs and ours != theirs):
        raise MegarankError(f"'{where}' was tokenized with another tokenizer (vocab {shards.vocab_size}, sha256 "
                            f"{str(ours)[:12]}) than the run's training data (vocab {trained.get('vocab_size')}, "
                            f"sha256 {str(theirs)[:12]}); re-tokenize it with the run's tokenizer")


def evaluate_checkpoint(path: str | Path, *, split: str = "test", data: str | Path | None = None,
                        batch_size: int = 8, device: str | torch.device = "cpu", weights: str = "module",
                        progress: bool = True) -> dict:
    """Perplexity of the GPT checkpoint `path` (run dir, checkpoint dir or global_step<N>) on every token of
    `split`; returns what megarank-eval writes to its JSON file."""
    if batch_size < 1:
        raise MegarankError(f"batch size must be at least 1, got {batch_size}")
    _, marker = open_checkpoint(path)  # metadata only: bad input fails before any data is built
    data_cfg = marker.section("data")
    directory = split_dir(data_cfg, split, data, progress=progress)
    shards = TokenShards(directory)
    check_tokenizer(shards, data_cfg, eval_model_config(marker).vocab_size, other_data=data is not None)
    loaded = load_gpt(path, weights=weights, device=device)
    seq_len = loaded.model.cfg.seq_len
    result = perplexity(loaded.model, shards, seq_len=seq_len, batch_size=batch_size, device=device,
                        progress=progress)
    return {"split": split, **result, "checkpoint": str(loaded.tag_dir), "step": loaded.step,
            "data": str(directory), "seq_len": seq_len, "weights": weights, "layout": loaded.layout}

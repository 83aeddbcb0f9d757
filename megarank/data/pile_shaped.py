"""A generated corpus in the Pile's layout, for tests and `make bench-data` (nothing is downloaded).

The Pile ships `train/00.jsonl.zst` ... `29.jsonl.zst`, `val.jsonl.zst` and `test.jsonl.zst`: one JSON object
per line, `{"text": ..., "meta": {"pile_set_name": ...}}`, zstd-compressed. The documents here are pieces of
the running interpreter's standard-library source (real text, so the tokenizer works as hard as on real data),
of log-normal length like web documents, seeded, so the same call writes the same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import zstandard

from megarank.data.stdlib_corpus import stdlib_source_files

_SET_NAMES = ("Pile-CC", "Github", "StackExchange", "Wikipedia (en)", "ArXiv")


def write_pile_shaped(out_dir: str | Path, *, train_files: int = 2, mb_per_file: float = 1.0,
                      eval_mb: float = 0.1, seed: int = 0) -> dict[str, list[Path]]:
    """Write out_dir/train/NN.jsonl.zst, out_dir/val.jsonl.zst and out_dir/test.jsonl.zst; returns the files
    by split. Sizes are of the uncompressed text."""
    out_dir = Path(out_dir)
    (out_dir / "train").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    source = "".join(path.read_text(encoding="utf-8", errors="replace") for path in stdlib_source_files()[:300])
    files: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for k in range(train_files):
        files["train"].append(_write_file(out_dir / "train" / f"{k:02d}.jsonl.zst", source, mb_per_file, rng))
    for split in ("val", "test"):
        files[split].append(_write_file(out_dir / f"{split}.jsonl.zst", source, eval_mb, rng))
    return files


def _write_file(path: Path, source: str, mb: float, rng: random.Random) -> Path:
    target, written = int(mb * 1e6), 0
    compressor = zstandard.ZstdCompressor(level=3)
    with open(path, "wb") as raw, compressor.stream_writer(raw) as out:
        while written < target:
            length = min(int(rng.lognormvariate(8.0, 1.0)) + 1, 200_000)  # median ~3 kB, a long tail
            start = rng.randrange(0, len(source) - length)
            text = source[start : start + length]
            line = json.dumps({"text": text, "meta": {"pile_set_name": rng.choice(_SET_NAMES)}}) + "\n"
            out.write(line.encode("utf-8"))
            written += len(text.encode("utf-8"))
    return path

"""Train a SentencePiece tokenizer on local files (jsonl, jsonl.zst, json, parquet, txt) or a hub data set.

    python tools/train_tokenizer.py --input 'data/*.jsonl.zst' --vocab-size 32000 --model-prefix tok/pile32k
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator

from megarank.data.preprocess import load_text_source
from megarank.data.tokenizer import train_tokenizer
from megarank.errors import MegarankError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="files, directories, globs or a hub data set name")
    parser.add_argument("--text-key", default="text", help="column holding the documents")
    parser.add_argument("--split", default="train", help="split to read (hub data sets)")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--model-prefix", required=True, help="writes MODEL_PREFIX.model")
    parser.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    parser.add_argument("--max-chars", type=int, default=20_000_000, help="train on at most this many characters")
    args = parser.parse_args(argv)
    try:
        # streaming: only the first max_chars characters are read, however large the source
        sources = [load_text_source(s, split=args.split, text_key=args.text_key, streaming=True) for s in args.input]
        texts = _texts(itertools.chain.from_iterable(sources), args.text_key)
        path = train_tokenizer(
            texts, args.model_prefix, args.vocab_size, model_type=args.model_type, max_chars=args.max_chars
        )
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _texts(rows: Iterator[dict], text_key: str) -> Iterator[str]:
    for row in rows:
        yield row[text_key] or ""


if __name__ == "__main__":
    sys.exit(main())

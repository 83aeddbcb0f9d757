"""Train a SentencePiece tokenizer on local files (jsonl, jsonl.zst, json, parquet, txt) or a hub data set.

The training text is a seeded uniform sample of documents from every input file (--max-chars in all), read
in --num-proc workers; the same inputs and seed give the same model.

    python tools/train_tokenizer.py --input 'pile/train/*.jsonl.zst' --vocab-size 50304 --model-prefix tok/pile \
        --num-proc 16
"""

from __future__ import annotations

import argparse
import sys

from megarank.data.tokenizer import train_tokenizer
from megarank.data.tokenizer_sample import sample_documents
from megarank.errors import MegarankError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="files, directories, globs or a hub data set name")
    parser.add_argument("--text-key", default="text", help="column holding the documents")
    parser.add_argument("--split", default="train", help="split to read (hub data sets)")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--model-prefix", required=True, help="writes MODEL_PREFIX.model")
    parser.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    parser.add_argument("--max-chars", type=int, default=20_000_000, help="train on a sample of this many characters")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document sample")
    parser.add_argument("--num-proc", type=int, default=1, help="processes reading the input files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        texts = sample_documents(args.input, max_chars=args.max_chars, seed=args.seed, split=args.split,
                                 text_key=args.text_key, num_proc=args.num_proc, show_progress=not args.no_progress)
        path = train_tokenizer(
            texts, args.model_prefix, args.vocab_size, model_type=args.model_type, max_chars=args.max_chars
        )
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

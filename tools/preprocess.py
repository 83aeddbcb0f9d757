"""Tokenize text into token shards for training: OUT/train, and OUT/val, OUT/test from their own files (the
Pile ships val.jsonl.zst and test.jsonl.zst) or a held-out fraction of the training documents.

    python tools/preprocess.py 'pile/train/*.jsonl.zst' --val pile/val.jsonl.zst --test pile/test.jsonl.zst \
        --tokenizer tok/pile.model --out data/pile --num-proc 16

Every input file is tokenized by one of --num-proc workers straight into its own shards. Interrupted (a kill,
Ctrl-C, a bad file), it keeps the finished files in OUT/.partial/: the same command again does only the rest
and gives the same bytes as one uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys

from megarank.data.preprocess import PARTIAL_DIR, preprocess
from megarank.errors import MegarankError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="training text: file, directory, glob (jsonl, jsonl.zst, json, parquet, "
                                       "txt) or hub name")
    parser.add_argument("--val", help="validation text, from its own files (instead of --val-fraction)")
    parser.add_argument("--test", help="test text, from its own files")
    parser.add_argument("--tokenizer", required=True, help="sentencepiece .model file")
    parser.add_argument("--out", required=True, help="output directory; its splits must not exist yet")
    parser.add_argument("--text-key", default="text", help="column holding the documents")
    parser.add_argument("--split", default="train", help="split of each source to read (hub data sets)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="fraction of training documents held out as OUT/val (corpora without a val set)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out documents")
    parser.add_argument("--num-proc", type=int, default=1, help="tokenizer processes (one input file each)")
    parser.add_argument("--shard-tokens", type=int, default=50_000_000, help="tokens per shard file at most")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    sources = {"train": args.source, "val": args.val, "test": args.test}
    try:
        summary = preprocess(
            {split: source for split, source in sources.items() if source},
            args.tokenizer,
            args.out,
            text_key=args.text_key,
            split=args.split,
            val_fraction=args.val_fraction,
            seed=args.seed,
            num_proc=args.num_proc,
            shard_tokens=args.shard_tokens,
            show_progress=not args.no_progress,
        )
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; finished files are kept in {args.out}/{PARTIAL_DIR}, run the same command to finish",
              file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Preprocessing at scale, measured on a generated Pile-shaped input (make bench-data): throughput against the
encode limit measured in the same run, extra disk, and peak memory at two input sizes.

    python tools/bench_data.py --num-proc 2 --mb 100 200 --json runs/bench_data.json

For each size: NN.jsonl.zst train files, val.jsonl.zst and test.jsonl.zst are written under a temporary
directory, then `tools/preprocess.py` runs on them as a user would (a subprocess, so its memory is its own).
- encode limit: sentencepiece on one thread, in this process, over documents of the input: tokens/s per core.
- throughput: tokens written / wall time of the whole preprocess command (start-up and reading included).
- extra disk: everything under the run's HF_HOME (the datasets caches) and OUT besides the shards, at its most.
- peak RSS: the sum over the preprocess process and its workers, sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megarank.data.pile_shaped import write_pile_shaped  # noqa: E402
from megarank.data.sources import part_texts, source_parts  # noqa: E402
from megarank.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from megarank.data.tokenizer_sample import sample_documents  # noqa: E402

GOAL_FRACTION = 0.7  # of N workers x the one-core encode limit
GOAL_EXTRA_DISK = 0.10  # of the output
GOAL_RSS_MB = 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, nargs="+", default=[100.0, 200.0], help="input sizes (MB of text)")
    parser.add_argument("--train-files", type=int, default=4, help="train files per input")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        for mb in args.mb:
            rows.append(_bench_one(tmp / f"{mb:g}mb", mb, args))
    _print_table(rows, args.num_proc)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def _bench_one(root: Path, mb: float, args) -> dict:
    print(f"[bench-data] writing a Pile-shaped input of {mb:g} MB ...", flush=True)
    write_pile_shaped(root / "pile", train_files=args.train_files, mb_per_file=mb / args.train_files,
                      eval_mb=mb / 200)
    pile = root / "pile"
    start = time.perf_counter()
    sample = sample_documents([str(pile / "train")], max_chars=5_000_000, num_proc=args.num_proc,
                              show_progress=False)
    model = train_tokenizer(sample, root / "tok", args.vocab_size, max_chars=5_000_000)
    tokenizer_seconds = time.perf_counter() - start
    per_core = _encode_limit(Tokenizer(model), pile)
    hf_home, out = root / "hf_home", root / "out"
    command = [sys.executable, str(REPO / "tools" / "preprocess.py"), str(pile / "train"),
               "--val", str(pile / "val.jsonl.zst"), "--test", str(pile / "test.jsonl.zst"),
               "--tokenizer", str(model), "--out", str(out), "--num-proc", str(args.num_proc), "--no-progress"]
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_DATASETS_CACHE": str(hf_home / "datasets")}
    print(f"[bench-data] {' '.join(command[1:3])} ... --num-proc {args.num_proc}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    sampler = _Sampler(proc.pid, [hf_home, out])
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"preprocess failed with exit code {proc.returncode}")
    summary = json.loads(stdout)
    tokens = sum(split["n_tokens"] for split in summary.values())
    output_bytes = sum(p.stat().st_size for p in out.rglob("*.bin"))
    text_bytes = sum(len(t.encode("utf-8")) for src in ("train", "val.jsonl.zst", "test.jsonl.zst")
                     for part in source_parts(str(pile / src)) for t in part_texts(part, "text"))
    tokens_per_s = tokens / wall
    return {
        "input_mb_text": text_bytes / 1e6,
        "input_files": args.train_files + 2,
        "num_proc": args.num_proc,
        "tokenizer_seconds": tokenizer_seconds,
        "encode_limit_tokens_per_s_per_core": per_core,
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens_per_s,
        "fraction_of_n_cores_limit": tokens_per_s / (args.num_proc * per_core),
        "output_mb": output_bytes / 1e6,
        "extra_disk_mb": sampler.peak_extra_bytes() / 1e6,
        "extra_disk_fraction": sampler.peak_extra_bytes() / output_bytes,
        "peak_rss_mb": sampler.peak_rss / 1e6,
    }


def _encode_limit(tokenizer: Tokenizer, pile: Path, n_chars: int = 10_000_000) -> float:
    """Tokens per second of sentencepiece on one thread over the first n_chars of the training text."""
    docs, total = [], 0
    for part in source_parts(str(pile / "train")):
        for text in part_texts(part, "text"):
            docs.append(text)
            total += len(text)
            if total >= n_chars:
                break
        if total >= n_chars:
            break
    start = time.perf_counter()
    tokens = sum(len(ids) for i in range(0, len(docs), 256)
                 for ids in tokenizer.encode_batch(docs[i : i + 256], num_threads=1))
    return tokens / (time.perf_counter() - start)


class _Sampler(threading.Thread):
    """Every 0.1 s: the RSS summed over a process and its descendants, and the bytes under some directories."""

    def __init__(self, pid: int, directories: list[Path]) -> None:
        super().__init__(daemon=True)
        self.pid, self.directories = pid, directories
        self.peak_rss = 0
        self.samples: list[tuple[int, int]] = []  # (all bytes, shard bytes)
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_rss = max(self.peak_rss, sum(_rss(pid) for pid in _tree(self.pid)))
            self.samples.append(_disk(self.directories))
            time.sleep(0.1)

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.samples.append(_disk(self.directories))

    def peak_extra_bytes(self) -> int:
        """The most bytes on disk at any time beyond the shards written so far."""
        return max(total - shards for total, shards in self.samples)


def _tree(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        p = stack.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                stack.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return pids


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _disk(directories: list[Path]) -> tuple[int, int]:
    total = shards = 0
    for directory in directories:
        for path in directory.rglob("*") if directory.exists() else []:
            try:
                size = path.stat().st_size if path.is_file() else 0
            except OSError:  # renamed or removed while we looked
                continue
            total += size
            shards += size if path.suffix == ".bin" else 0
    return total, shards


def _print_table(rows: list[dict], num_proc: int) -> None:
    print(f"\n| input (MB of text) | one-core encode limit | {num_proc} workers | of {num_proc} × limit "
          f"(goal ≥ {GOAL_FRACTION:.0%}) | output | extra disk (goal ≤ {GOAL_EXTRA_DISK:.0%}) | peak RSS "
          f"(goal < {GOAL_RSS_MB} MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input_mb_text']:.0f} | {r['encode_limit_tokens_per_s_per_core'] / 1e6:.2f}M tok/s | "
              f"{r['tokens_per_s'] / 1e6:.2f}M tok/s ({r['wall_s']:.1f} s) | {r['fraction_of_n_cores_limit']:.0%} | "
              f"{r['output_mb']:.0f} MB | {r['extra_disk_mb']:.2f} MB ({r['extra_disk_fraction']:.2%}) | "
              f"{r['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    sys.exit(main())

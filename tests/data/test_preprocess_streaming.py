"""Streaming preprocessing on a generated corpus in the Pile's layout (train/NN.jsonl.zst, val.jsonl.zst,
test.jsonl.zst): each split's files land in its split and its token stream equals direct encoding of every
document plus EOS; a run killed with SIGKILL in the middle and run again gives the bytes of an uninterrupted
run; a corrupt .zst, a line that is not JSON and a missing text key are one line naming the file and line,
leave no split directory and no file of the failing part, and a rerun after the fix finishes the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import zstandard

from megarank.data.pile_shaped import write_pile_shaped
from megarank.data.preprocess import PARTIAL_DIR, PROGRESS_NAME, preprocess
from megarank.data.shards import TokenShards
from megarank.data.sources import part_texts, source_parts
from megarank.data.tokenizer import Tokenizer, train_tokenizer
from megarank.errors import MegarankError
from megarank.evaluation.cli import main as evaluate
from tests.helpers import REPO, run_training, train_losses

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def pile(tmp_path_factory) -> Path:
    return write_pile_shaped(tmp_path_factory.mktemp("pile"), train_files=4, mb_per_file=0.6, eval_mb=0.1)["val"][0].parent


@pytest.fixture(scope="module")
def model(pile, tmp_path_factory) -> Path:
    texts = [text for part in source_parts(str(pile / "train")) for text in part_texts(part, "text")]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tok", 400, max_chars=500_000)


def pile_sources(pile: Path) -> dict[str, str]:
    return {"train": str(pile / "train"), "val": str(pile / "val.jsonl.zst"), "test": str(pile / "test.jsonl.zst")}


def documents(source: str) -> list[str]:
    return [text for part in source_parts(source) for text in part_texts(part, "text")]


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def straight(pile, model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "out"
    preprocess(pile_sources(pile), model, out, num_proc=2, shard_tokens=30_000, show_progress=False)
    return out


def test_each_split_holds_its_files_encoded_with_eos(pile, model, straight):
    tokenizer = Tokenizer(model)
    for split, source in pile_sources(pile).items():
        docs = documents(source)
        expected = np.array([i for doc in docs for i in [*tokenizer.encode(doc), tokenizer.eos_id]])
        shards = TokenShards(straight / split)
        np.testing.assert_array_equal(shards.read(0, shards.n_tokens), expected)
        assert shards.meta["n_docs"] == len(docs) and shards.meta["split"] == split
        assert [p["input"] for p in shards.meta["parts"]] == [p.name for p in source_parts(source)]
    assert len(TokenShards(straight / "train").meta["parts"]) == 4 and not (straight / PARTIAL_DIR).exists()


def test_rerun_of_a_finished_job_changes_nothing(pile, model, straight):
    before = tree_bytes(straight)
    summary = preprocess(pile_sources(pile), model, straight, num_proc=2, shard_tokens=30_000, show_progress=False)
    assert tree_bytes(straight) == before and set(summary) == set(SPLITS)


def run_cli(pile: Path, model: Path, out: Path) -> subprocess.Popen:
    argv = [sys.executable, "tools/preprocess.py", str(pile / "train"), "--val", str(pile / "val.jsonl.zst"),
            "--test", str(pile / "test.jsonl.zst"), "--tokenizer", str(model), "--out", str(out),
            "--num-proc", "2", "--shard-tokens", "30000", "--no-progress"]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_then_rerun_gives_the_same_bytes(pile, model, straight, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(pile, model, out)
    progress = out / PARTIAL_DIR / PROGRESS_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill once some parts, not all, are recorded
        if progress.is_file() and json.loads(progress.read_text())["parts"]:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(progress.read_text())["parts"]
    assert 0 < len(done) < 6 and not (out / "train").exists()
    rerun = run_cli(pile, model, out)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert tree_bytes(out) == tree_bytes(straight)


def corrupt_zst(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))


def not_json(path: Path) -> None:
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()).decode().splitlines()
    lines[6] = '{"text": broken'
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))


def missing_key(path: Path) -> None:
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()).decode().splitlines()
    lines[6] = json.dumps({"body": "no text here", "meta": {}})
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))


@pytest.mark.parametrize("damage, message", [
    (corrupt_zst, r"02\.jsonl\.zst: ZstdError: .* after line \d+; the file is damaged, copy it again"),
    (not_json, r"02\.jsonl\.zst:7: not JSON \(Expecting value\); fix or drop the line"),
    (missing_key, r"02\.jsonl\.zst:7: no text under 'text' \(has \['body', 'meta'\]\); fix or drop the line"),
])
def test_bad_input_is_one_line_naming_file_and_line(damage, message, pile, model, straight, tmp_path):
    source = tmp_path / "train"
    source.mkdir()
    for path in sorted((pile / "train").iterdir()):
        (source / path.name).write_bytes(path.read_bytes())
    good = (source / "02.jsonl.zst").read_bytes()
    damage(source / "02.jsonl.zst")
    out = tmp_path / "out"
    with pytest.raises(MegarankError, match=message) as err:
        preprocess({"train": str(source)}, model, out, shard_tokens=30_000, show_progress=False)
    assert "\n" not in str(err.value)
    assert not (out / "train").exists()
    recorded = json.loads((out / PARTIAL_DIR / PROGRESS_NAME).read_text())["parts"]
    kept = {shard["file"] for record in recorded.values() for shard in record["train"]["shards"]}
    assert {p.name for p in (out / PARTIAL_DIR / "train").iterdir()} == kept  # finished parts only
    assert "train:00002" not in recorded
    (source / "02.jsonl.zst").write_bytes(good)  # the fix: the file copied again
    preprocess({"train": str(source)}, model, out, shard_tokens=30_000, show_progress=False)
    assert tree_bytes(out / "train").keys() == tree_bytes(straight / "train").keys()
    assert TokenShards(out / "train").content_sha256 == TokenShards(straight / "train").content_sha256


def test_a_partial_run_with_other_settings_is_refused(pile, model, tmp_path):
    out = tmp_path / "out"
    (out / PARTIAL_DIR).mkdir(parents=True)
    (out / PARTIAL_DIR / PROGRESS_NAME).write_text(json.dumps({"settings": {"seed": 1}, "parts": {}}))
    with pytest.raises(MegarankError, match=r"holds an interrupted run with other settings \(differs in .*seed"):
        preprocess(pile_sources(pile), model, out, show_progress=False)


def test_a_val_source_and_a_val_fraction_together_are_refused(pile, model, tmp_path):
    with pytest.raises(MegarankError, match="both a val source and --val-fraction"):
        preprocess(pile_sources(pile), model, tmp_path / "out", val_fraction=0.1, show_progress=False)


def test_the_readme_recipe_trains_and_evaluates_on_the_output(straight, tmp_path):
    """Preprocess -> train -> test perplexity, as README's Pile recipe: training reads the shards unchanged."""
    run_dir = tmp_path / "run"
    run_training(run_dir, straight, "train.max_steps=3", "checkpoint.every=3", "zero.stage=0")
    assert sorted(train_losses(run_dir)) == [1, 2, 3]
    assert evaluate([str(run_dir), "--data", str(straight), "--split", "test"]) == 0
    report = json.loads((run_dir / "eval_test.json").read_text())
    assert report["tokens"] == TokenShards(straight / "test").n_tokens - 1 and report["ppl"] > 1


def test_a_hub_data_set_is_cut_into_its_shards(pile, monkeypatch):
    """A hub name (offline here: load_dataset answers with the local train files, as a hub set of 4 files
    streams) becomes one part per shard, read in order through IterableDataset.shard."""
    real_load = datasets.load_dataset
    files = sorted(str(p) for p in (pile / "train").iterdir())
    expected = documents(str(pile / "train"))

    def hub(path, split, streaming, **options):
        assert path == "org/pile-like" and streaming and not options
        return real_load("json", data_files={split: files}, split=split, streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    parts = source_parts("org/pile-like")
    assert [p.name for p in parts] == [f"org/pile-like[shard {k} of 4]" for k in range(4)]
    assert [text for part in parts for text in part_texts(part, "text")] == expected

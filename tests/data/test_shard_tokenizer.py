"""Shards against the tokenizer a run uses: shards written with one real SentencePiece model (recording its path
and sha256 as tools/preprocess.py does) are refused with another model, naming both, accepted with their own;
a val/ split made with another tokenizer than train/ is refused; and megarank-train refuses the test corpus
with data.tokenizer pointing at another model (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megarank.data.shard_tokenizer import check_shards_tokenizer
from megarank.data.shards import TokenShards, write_shards
from megarank.data.tokenizer import Tokenizer, train_tokenizer
from megarank.errors import MegarankError
from tests.helpers import TINY, run_cli

TEXTS = [f"def f_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> tuple[Path, Path]:
    """Two different real models: the same text at two vocabulary sizes."""
    root = tmp_path_factory.mktemp("tok")
    return train_tokenizer(TEXTS, root / "a", 300), train_tokenizer(TEXTS, root / "b", 290)


def shards_made_with(model: Path, out: Path) -> TokenShards:
    tokenizer = Tokenizer(model)
    write_shards((tokenizer.encode(t) for t in TEXTS[:20]), out, vocab_size=tokenizer.vocab_size,
                 eos_id=tokenizer.eos_id, extra_meta={"tokenizer": str(model), "tokenizer_sha256": tokenizer.sha256})
    return TokenShards(out)


def test_shards_with_another_tokenizer_are_refused_naming_both(tokenizers, tmp_path):
    a, b = tokenizers
    shards = shards_made_with(a, tmp_path / "train")
    check_shards_tokenizer([shards], a)  # their own: accepted
    with pytest.raises(MegarankError) as err:
        check_shards_tokenizer([shards], b)
    message = str(err.value)
    assert f"made with tokenizer {a} (sha256 {Tokenizer(a).sha256[:12]})" in message
    assert f"this run uses {b} (sha256 {Tokenizer(b).sha256[:12]})" in message and "\n" not in message


def test_val_made_with_another_tokenizer_than_train_is_refused(tokenizers, tmp_path):
    a, b = tokenizers
    train, val = shards_made_with(a, tmp_path / "train"), shards_made_with(b, tmp_path / "val")
    check_shards_tokenizer([train, shards_made_with(a, tmp_path / "val_a")], None)
    with pytest.raises(MegarankError, match=f"{tmp_path / 'val'} was made with tokenizer {b}.*this run uses {a}"):
        check_shards_tokenizer([train, val], None)


def test_training_refuses_the_corpus_with_another_tokenizer(tokenizers, tiny_corpus, tmp_path):
    proc = run_cli("configs/default.yaml", *TINY, f"data.path={tiny_corpus}", f"data.tokenizer={tokenizers[1]}",
                   f"train.run_dir={tmp_path / 'run'}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert f"made with tokenizer {tiny_corpus / 'tokenizer.model'}" in errors[0]
    assert f"this run uses {tokenizers[1]}" in errors[0]
    assert not (tmp_path / "run").exists()

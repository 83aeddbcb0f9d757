"""Tokenizer: decode(encode(s)) against the original string s, on stdlib code and on hand-made hard cases
(tabs, runs of spaces, CRLF, unicode, NUL); two trainings on the same input against each other."""

import pickle
import sysconfig
from pathlib import Path

import pytest
import sentencepiece as spm

from megarank.data.tokenizer import EOS_ID, Tokenizer, train_tokenizer
from megarank.errors import MegarankError

VOCAB = 400


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8") for p in sorted(stdlib.glob("*.py"))[:150]]


@pytest.fixture(scope="module")
def model_path(corpus, tmp_path_factory) -> Path:
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "code", VOCAB)


@pytest.fixture(scope="module")
def tokenizer(model_path) -> Tokenizer:
    return Tokenizer(model_path)


HARD_CASES = [
    "def f(x):\n\tif x  >  1:\n\t\treturn 'héllo 世界 🚀'\n",
    "    indented = True   # trailing spaces   \n\n\n",
    " leading space",
    "windows\r\nline\r\nends\r\n",
    "zero\u200bwidth\ufeffbom and NUL \x00 byte",
    "\t \t  \n",
    "",
]


@pytest.mark.parametrize("text", HARD_CASES)
def test_hard_strings_round_trip_exactly(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_training_documents_round_trip_exactly(tokenizer, corpus):
    assert all(tokenizer.decode(ids) == text for ids, text in zip(tokenizer.encode_batch(corpus), corpus))


def test_encode_batch_matches_encode(tokenizer, corpus):
    assert tokenizer.encode_batch(corpus[:20]) == [tokenizer.encode(t) for t in corpus[:20]]


def test_special_ids_and_no_bos_eos_added(tokenizer):
    assert (tokenizer.vocab_size, tokenizer.eos_id) == (VOCAB, EOS_ID)
    ids = tokenizer.encode("import os\n")
    assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids


def test_indentation_becomes_one_whitespace_piece(tokenizer):
    # allow_whitespace_only_pieces: code indentation must not cost one token per space
    assert len(tokenizer.encode(" " * 8)) == 1


def test_training_is_deterministic(corpus, model_path, tmp_path):
    again = train_tokenizer(corpus, tmp_path / "again", VOCAB)
    assert again.read_bytes() == model_path.read_bytes()
    assert _pieces(again) == _pieces(model_path)


def _pieces(model: Path) -> list[str]:
    sp = spm.SentencePieceProcessor(model_file=str(model))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def test_max_chars_caps_the_training_text(corpus, tmp_path):
    # 2000 characters cannot fill a 2000-entry vocabulary, while the whole corpus can
    train_tokenizer(corpus, tmp_path / "full", 2000)
    with pytest.raises(MegarankError, match="Vocabulary size too high"):
        train_tokenizer(corpus, tmp_path / "capped", 2000, max_chars=2000)
    assert not (tmp_path / "capped.model").exists()


def test_empty_input_is_a_clear_error(tmp_path):
    with pytest.raises(MegarankError, match="no text to train tokenizer"):
        train_tokenizer([], tmp_path / "empty", VOCAB)


def test_pickle_keeps_the_model(tokenizer):
    # datasets.map(num_proc>1) ships the tokenizer to workers by pickling it
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.encode(HARD_CASES[0]) == tokenizer.encode(HARD_CASES[0])
    assert clone.sha256 == tokenizer.sha256


def test_missing_model_names_the_path(tmp_path):
    with pytest.raises(MegarankError, match="nope.model not found"):
        Tokenizer(tmp_path / "nope.model")


def test_garbage_model_is_rejected(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(MegarankError, match="not a sentencepiece model"):
        Tokenizer(bad)

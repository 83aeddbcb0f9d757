"""Token shards and the training windows over them: every read() against slices of the reference stream
(the documents concatenated in Python with EOS after each), and damaged directories against the errors
that name the damaged file."""

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch

from megarank.data.shards import TokenShards, write_shards
from megarank.data.text_dataset import TokenSequenceDataset
from megarank.errors import MegarankError

VOCAB, EOS = 1000, 2


def make_docs(n_docs: int = 12, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, size=rng.integers(0, 9)).tolist() for _ in range(n_docs)]


def reference_stream(docs: list[list[int]]) -> np.ndarray:
    return np.array([t for doc in docs for t in [*doc, EOS]], dtype=np.int64)


@pytest.fixture
def written(tmp_path):
    docs = make_docs()
    out = write_shards(
        docs, tmp_path / "tokens", vocab_size=VOCAB, eos_id=EOS, shard_tokens=7, extra_meta={"source": "unit"}
    )
    return out, docs


def test_every_read_matches_the_reference_stream(written):
    out, docs = written
    expected = reference_stream(docs)
    shards = TokenShards(out)
    assert shards.n_tokens == len(expected)
    for start in range(len(expected)):
        for length in range(len(expected) - start + 1):
            got = shards.read(start, length)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, expected[start : start + length])


def test_index_describes_the_shards(written):
    out, docs = written
    index = json.loads((out / "index.json").read_text())
    n_tokens = len(reference_stream(docs))
    assert index["n_tokens"] == n_tokens and index["n_docs"] == len(docs)
    assert (index["dtype"], index["vocab_size"], index["eos_id"], index["source"]) == ("uint16", VOCAB, EOS, "unit")
    sizes = [s["n_tokens"] for s in index["shards"]]
    assert sizes == [7] * (n_tokens // 7) + ([n_tokens % 7] if n_tokens % 7 else [])
    for entry in index["shards"]:
        assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [f"shard_{i:05d}.bin" for i in range(len(sizes))]


@pytest.mark.parametrize(("vocab_size", "dtype"), [(65536, "uint16"), (65537, "uint32")])
def test_dtype_holds_the_largest_id(tmp_path, vocab_size, dtype):
    out = write_shards([[vocab_size - 1, 0]], tmp_path / "t", vocab_size=vocab_size, eos_id=1)
    shards = TokenShards(out)
    assert shards.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(shards.read(0, 3), [vocab_size - 1, 0, 1])


def test_refuses_to_overwrite_data(written):
    out, _ = written
    before = (out / "index.json").read_bytes()
    with pytest.raises(MegarankError, match="already exists and is not empty"):
        write_shards([[5]], out, vocab_size=VOCAB, eos_id=EOS)
    assert (out / "index.json").read_bytes() == before


def test_fills_an_existing_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    out = write_shards([[5, 6]], tmp_path / "empty", vocab_size=VOCAB, eos_id=EOS)
    np.testing.assert_array_equal(TokenShards(out).read(0, 3), [5, 6, EOS])


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def docs_then_crash():
        yield [5, 6]
        raise RuntimeError("tokenizer died")

    with pytest.raises(RuntimeError, match="tokenizer died"):
        write_shards(docs_then_crash(), tmp_path / "t", vocab_size=VOCAB, eos_id=EOS)
    assert list(tmp_path.iterdir()) == []


def test_ids_outside_the_vocab_are_rejected(tmp_path):
    with pytest.raises(MegarankError, match=f"token id {VOCAB} is outside the vocabulary"):
        write_shards([[1, VOCAB]], tmp_path / "t", vocab_size=VOCAB, eos_id=EOS)


def test_no_documents_is_an_error(tmp_path):
    with pytest.raises(MegarankError, match="no documents"):
        write_shards([], tmp_path / "t", vocab_size=VOCAB, eos_id=EOS)
    assert list(tmp_path.iterdir()) == []


def test_truncated_shard_names_the_file(written):
    out, _ = written
    shard = out / "shard_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(MegarankError, match="shard_00001.bin has 12 bytes but index.json expects 14"):
        TokenShards(out)


def test_missing_shard_names_the_file(written):
    out, _ = written
    (out / "shard_00000.bin").unlink()
    with pytest.raises(MegarankError, match="shard_00000.bin listed in index.json is missing"):
        TokenShards(out)


def test_missing_or_corrupt_index(written, tmp_path):
    out, _ = written
    with pytest.raises(MegarankError, match="index.json not found"):
        TokenShards(tmp_path)
    (out / "index.json").write_text("{not json")
    with pytest.raises(MegarankError, match="is not valid JSON"):
        TokenShards(out)


def test_read_outside_the_stream_raises(written):
    out, docs = written
    shards = TokenShards(out)
    with pytest.raises(IndexError):
        shards.read(shards.n_tokens - 1, 2)


def test_pickled_shards_reopen_the_files(written):
    out, docs = written
    clone = pickle.loads(pickle.dumps(TokenShards(out)))
    np.testing.assert_array_equal(clone.read(0, clone.n_tokens), reference_stream(docs))


# TokenSequenceDataset: windows of the reference stream


def test_windows_are_stream_slices_and_targets_shift_inputs(written):
    out, docs = written
    stream = torch.from_numpy(reference_stream(docs))
    seq_len = 5
    dataset = TokenSequenceDataset(TokenShards(out), seq_len)
    assert dataset.num_sequences == (len(stream) - 1) // seq_len
    ids = [dataset.num_sequences - 1, 0, 3]
    inputs, targets = dataset.batch(ids)
    assert inputs.shape == targets.shape == (len(ids), seq_len)
    assert inputs.dtype == targets.dtype == torch.int64
    for row, i in enumerate(ids):
        torch.testing.assert_close(inputs[row], stream[i * seq_len : (i + 1) * seq_len])
        torch.testing.assert_close(targets[row], stream[i * seq_len + 1 : (i + 1) * seq_len + 1])


def test_sequence_ids_outside_the_data_raise(written):
    out, _ = written
    dataset = TokenSequenceDataset(TokenShards(out), 5)
    with pytest.raises(IndexError):
        dataset.batch([dataset.num_sequences])


def test_too_little_data_for_seq_len(tmp_path):
    out = write_shards([[5, 6, 7]], tmp_path / "t", vocab_size=VOCAB, eos_id=EOS)  # 4 tokens
    assert TokenSequenceDataset(TokenShards(out), 3).num_sequences == 1
    with pytest.raises(MegarankError, match="has 4 tokens, fewer than seq_len\\+1 = 5; lower model.seq_len"):
        TokenSequenceDataset(TokenShards(out), 4)

"""The pydoc prose corpus: its documents against pydoc_data.topics itself, its split against the stated rule (every
8th topic), its shards decoded with the given tokenizer back to the topics' text, the recorded tokenizer against
that tokenizer's sha256, and the training data path (data.path + data.tokenizer) opening it."""

import os

import numpy as np
import pytest

from megarank.config.schema import DataConfig
from megarank.data.pydoc_prose import VAL_EVERY, ensure_prose_dataset, prose_location, pydoc_topics, split_topics
from megarank.data.shards import TokenShards
from megarank.data.tokenizer import Tokenizer, train_tokenizer
from megarank.data.training_data import open_text_data
from megarank.errors import MegarankError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    """A small BPE trained on code (not on the prose), as the pretrained run's tokenizer would be."""
    import inspect

    import megarank.data.shards as code
    text = inspect.getsource(code)
    return Tokenizer(train_tokenizer([text], tmp_path_factory.mktemp("tok") / "tokenizer", 512))


@pytest.fixture(scope="module")
def built(tokenizer, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, ensure_prose_dataset(cache, tokenizer.model_path)


def test_topics_are_pydoc_data_sorted():
    from pydoc_data.topics import topics

    ours = pydoc_topics()
    assert list(ours) == sorted(topics) and ours == topics and len(ours) > 50
    assert "for" in ours and "while" in ours["while"]


def test_split_is_every_8th_topic_disjoint():
    names = list(pydoc_topics())
    train, val = split_topics(list(reversed(names)))
    assert val == sorted(names)[::VAL_EVERY] and not set(train) & set(val) and set(train) | set(val) == set(names)
    assert split_topics(["a", "b", "c", "d", "e"], val_every=2) == (["b", "d"], ["a", "c", "e"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_shards_decode_back_to_the_topics(built, tokenizer, split):
    _, dataset = built
    topics = pydoc_topics()
    shards = TokenShards(getattr(dataset, f"{split}_dir"))
    stream = shards.read(0, shards.n_tokens)
    ends = np.flatnonzero(stream == tokenizer.eos_id)
    docs = [tokenizer.decode(d) for d in np.split(stream, ends + 1)[:-1]]
    names = split_topics(list(topics))[split == "val"]
    assert docs == [topics[n] for n in names]
    assert shards.meta["topics"] == names and shards.meta["split"] == split
    assert shards.tokenizer_sha256 == tokenizer.sha256 and shards.vocab_size == tokenizer.vocab_size


def test_location_names_the_tokenizer_and_a_second_call_is_a_cache_hit(built, tokenizer):
    cache, dataset = built
    assert dataset == prose_location(cache, tokenizer.model_path) and tokenizer.sha256[:12] in dataset.root.name
    before = os.stat(dataset.train_dir / "index.json").st_mtime_ns
    assert ensure_prose_dataset(cache, tokenizer.model_path, topics={}) == dataset  # {} would fail a rebuild
    assert os.stat(dataset.train_dir / "index.json").st_mtime_ns == before
    assert sorted(p.name for p in cache.iterdir()) == [".lock", dataset.root.name]  # no temporary directories


def test_training_opens_it_with_the_pretrained_tokenizer(built, tokenizer, tmp_path):
    _, dataset = built
    data = open_text_data(DataConfig(path=str(dataset.root), tokenizer=str(tokenizer.model_path)), seq_len=32,
                          seed=1, show_progress=False)
    assert data.vocab_size == tokenizer.vocab_size and data.val is not None
    assert data.identity["tokenizer_sha256"] == tokenizer.sha256
    other = Tokenizer(train_tokenizer(["def f(x):\n    return x\n" * 200], tmp_path / "other", 290))
    with pytest.raises(MegarankError, match="tokenizer"):
        open_text_data(DataConfig(path=str(dataset.root), tokenizer=str(other.model_path)), seq_len=32, seed=1,
                       show_progress=False)


def test_errors_are_one_line(tmp_path, tokenizer):
    with pytest.raises(MegarankError, match="not found"):
        ensure_prose_dataset(tmp_path, tmp_path / "missing.model")
    with pytest.raises(MegarankError, match="nothing to train on"):
        ensure_prose_dataset(tmp_path, tokenizer.model_path, topics={"only": "one topic"})
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]

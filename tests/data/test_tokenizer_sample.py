"""The tokenizer's training sample against its rule: the documents of smallest seeded key across every file,
up to max_chars; the same for one and two workers and for a rerun, another for another seed, drawn from every
file (not the head of the first), and no more text than asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megarank.data.sources import source_parts
from megarank.data.tokenizer_sample import document_key, sample_documents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for k in range(4):
        docs = [f"file {k} document {i} " + "x" * (i % 7) for i in range(200)]
        (root / f"{k:02d}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root


def test_sample_is_the_smallest_keys_up_to_max_chars(corpus):
    sample = sample_documents([str(corpus)], max_chars=5_000, seed=3, show_progress=False)
    everything = [(document_key(3, part, i), f"file {part.index} document {i} " + "x" * (i % 7))
                  for part in source_parts(str(corpus)) for i in range(200)]
    expected, n_chars = [], 0
    for _, text in sorted(everything):
        if n_chars >= 5_000:
            break
        expected.append(text)
        n_chars += len(text)
    assert sample == expected
    assert 5_000 <= sum(map(len, sample)) < 5_000 + 40


def test_sample_is_seeded_independent_of_workers_and_draws_from_every_file(corpus):
    one = sample_documents([str(corpus)], max_chars=5_000, seed=0, show_progress=False)
    assert sample_documents([str(corpus)], max_chars=5_000, seed=0, num_proc=2, show_progress=False) == one
    assert sample_documents([str(corpus)], max_chars=5_000, seed=0, show_progress=False) == one
    assert sample_documents([str(corpus)], max_chars=5_000, seed=1, show_progress=False) != one
    files = {text.split()[1] for text in one}
    assert files == {"0", "1", "2", "3"}
    assert len(one) < 4 * 200 / 2  # a sample, not the head of the corpus

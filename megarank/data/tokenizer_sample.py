"""A seeded, uniform sample of documents from every part of a corpus, to train the tokenizer on.

The head of the first file is not the corpus (the Pile's files each mix all its subsets, but other corpora are
sorted by source or date). Each document gets a key from a seeded hash of its place (part, index); the sample
is the documents with the smallest keys, up to max_chars characters: a uniform sample without replacement of
the whole corpus, whatever the number of workers. Each part keeps at most max_chars characters of its own
smallest-key documents (a heap), so memory is bounded by max_chars per worker, and the merge keeps the global
smallest. Every file is read once, in parallel, as sentencepiece's own input sampling would.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from megarank.data.part_pool import Progress, Report, run_parts
from megarank.data.sources import Part, part_texts, place_hash, source_parts


@dataclass(frozen=True)
class _SampleJob:
    part: Part
    text_key: str
    max_chars: int
    seed: int


def sample_documents(sources: list[str], *, max_chars: int, seed: int = 0, split: str = "train",
                     text_key: str = "text", num_proc: int = 1, show_progress: bool = True) -> list[str]:
    """Documents drawn uniformly from every part of `sources`, at most max_chars characters in all (the last
    one may pass it), in key order."""
    parts = [part for source in sources for part in source_parts(source, split=split, text_key=text_key)]
    jobs = [_SampleJob(part, text_key, max_chars, seed) for part in parts]
    kept: list[tuple[int, str, int, str]] = []
    bar = Progress(len(jobs), f"sampling {len(jobs)} parts for the tokenizer", enabled=show_progress)
    try:
        run_parts(_sample_part, jobs, num_proc=num_proc, progress=bar, on_result=lambda job, docs: kept.extend(docs))
    finally:
        bar.close()
    sample, n_chars = [], 0
    for _, _, _, text in sorted(kept):
        if n_chars >= max_chars:
            break
        sample.append(text)
        n_chars += len(text)
    return sample


def document_key(seed: int, part: Part, doc_index: int) -> int:
    """A document's place in the sample order: a hash, so it needs no shared random state across workers."""
    return place_hash(seed, part.source, part.index, doc_index)


def _sample_part(job: _SampleJob, report: Report) -> list[tuple[int, str, int, str]]:
    """The part's smallest-key documents up to max_chars characters, as (key, part name, index, text)."""
    heap: list[tuple[int, int, str]] = []  # (-key, index, text): the largest key on top, to drop first
    n_chars = 0
    for index, text in enumerate(part_texts(job.part, job.text_key)):
        item = (-document_key(job.seed, job.part, index), index, text)
        if n_chars < job.max_chars:
            heapq.heappush(heap, item)
            n_chars += len(text)
        elif item > heap[0]:  # a smaller key than the largest kept
            heapq.heappush(heap, item)
            n_chars += len(text)
            while n_chars - len(heap[0][2]) >= job.max_chars:  # drop the largest keys while enough remains
                n_chars -= len(heapq.heappop(heap)[2])
        report(1, len(text.encode("utf-8")), 0)
    return [(-negative, job.part.name, index, text) for negative, index, text in heap]

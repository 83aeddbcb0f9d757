"""Text sources -> token shards, streaming: read, tokenize in N workers, write, with nothing else on disk.

Each input file (a part) is read through `datasets` streaming, tokenized in one worker and written straight
to its own shard files `OUT/<split>/part_<k>_<j>.bin`; no Arrow copy of the text and no copy of the token ids
is made, and a worker holds one batch of documents at a time, so memory does not grow with the input. Splits
come from their own sources, as the Pile ships them (train files, val.jsonl.zst, test.jsonl.zst); a corpus
without a validation set can hold out a seeded fraction of its documents instead.

Resumable: while it runs, everything lives in OUT/.partial/, and progress.json there records each part when
its shards are complete. Rerunning the same command after a kill tokenizes only the parts not recorded and
gives the same bytes as an uninterrupted run (a part's shards depend on its file and the settings alone). When
all parts are done, each split gets its index.json (the shard list training reads, plus the parts) and is
renamed into place, so OUT/<split> is either complete or absent.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from megarank.data.part_pool import Progress, Report, run_parts
from megarank.data.shards import FORMAT_VERSION, INDEX_NAME, ShardWriter, TokenShards, check_writable, index_fields
from megarank.data.sources import Part, part_texts, place_hash, source_parts
from megarank.data.tokenizer import Tokenizer
from megarank.errors import MegarankError
from megarank.files import atomic_write_json

SPLITS = ("train", "val", "test")
PARTIAL_DIR = ".partial"
PROGRESS_NAME = "progress.json"
_ENCODE_DOCS = 256  # documents per sentencepiece call


@dataclass(frozen=True)
class PartJob:
    """Tokenize one part into `outputs` (its split, or train and val when documents are held out)."""

    part: Part
    role: str  # the split whose source this part belongs to
    outputs: tuple[str, ...]
    staging: str
    tokenizer_path: str
    text_key: str
    shard_tokens: int
    val_fraction: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.role}:{self.part.index:05d}"


def preprocess(
    sources: str | dict[str, str],
    tokenizer_model: str | Path,
    out_dir: str | Path,
    *,
    text_key: str = "text",
    split: str = "train",
    val_fraction: float = 0.0,
    seed: int = 0,
    num_proc: int = 1,
    shard_tokens: int = 50_000_000,
    show_progress: bool = True,
) -> dict:
    """Tokenize `sources` ({split: source}, or one source for train) into out_dir/<split>; returns each split's
    documents, tokens and directory. `split` is the split of each source to read (hub data sets)."""
    sources = {"train": sources} if isinstance(sources, str) else dict(sources)
    out_dir = Path(out_dir)
    _check_arguments(sources, val_fraction, num_proc, shard_tokens)
    tokenizer = Tokenizer(tokenizer_model)
    outputs = {role: (role, "val") if role == "train" and val_fraction > 0 else (role,) for role in sources}
    splits = [name for name in SPLITS if any(name in o for o in outputs.values())]
    settings = {
        "format_version": FORMAT_VERSION,
        "sources": sources,
        "source_split": split,
        "text_key": text_key,
        "tokenizer_sha256": tokenizer.sha256,
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_tokens": shard_tokens,
    }
    done_splits = [name for name in splits if _finished(out_dir / name, settings)]
    todo = [name for name in splits if name not in done_splits]
    for name in todo:
        check_writable(out_dir / name)
    staging = out_dir / PARTIAL_DIR
    jobs = [PartJob(part, role, outputs[role], str(staging), str(tokenizer.model_path.resolve()), text_key,
                    shard_tokens, val_fraction, seed)
            for role in sources if set(outputs[role]) & set(todo)
            for part in source_parts(sources[role], split=split, text_key=text_key)]
    if todo:
        _tokenize_splits(jobs, todo, staging, out_dir, settings, tokenizer, num_proc, show_progress)
    summary = {}
    for name in splits:
        shards = TokenShards(out_dir / name)
        summary[name] = {"n_docs": shards.meta["n_docs"], "n_tokens": shards.n_tokens, "dir": str(out_dir / name)}
    return summary


def _tokenize_splits(jobs: list[PartJob], todo: list[str], staging: Path, out_dir: Path, settings: dict,
                     tokenizer: Tokenizer, num_proc: int, show_progress: bool) -> None:
    """Tokenize the parts progress.json does not record yet, then index and move each split into place."""
    staging.mkdir(parents=True, exist_ok=True)
    with _lock(staging):
        progress_file = _open_staging(staging, settings, todo)
        records = _recorded(progress_file, jobs)
        _remove_unrecorded(staging, todo, records)
        pending = sorted((job for job in jobs if job.key not in records), key=_size, reverse=True)

        def record(job: PartJob, result: dict) -> None:
            records[job.key] = result
            _write_json(progress_file, {"settings": settings, "parts": records})

        bar = Progress(len(pending), f"tokenizing {len(pending)} of {len(jobs)} parts", enabled=show_progress)
        try:
            run_parts(tokenize_part, pending, num_proc=num_proc, progress=bar, on_result=record)
        except BaseException:
            _remove_unrecorded(staging, todo, records)  # the parts in flight; recorded ones stay for the rerun
            raise
        finally:
            bar.close()
        for name in todo:  # every split has documents before any is moved into place
            _check_not_empty(out_dir / name, name, jobs, records, settings)
        for name in todo:
            _finish_split(staging / name, out_dir / name, name, jobs, records, settings, tokenizer)
    shutil.rmtree(staging)


def _check_arguments(sources: dict, val_fraction: float, num_proc: int, shard_tokens: int) -> None:
    unknown = set(sources) - set(SPLITS)
    if unknown:
        raise MegarankError(f"unknown split {sorted(unknown)}; sources are given for {', '.join(SPLITS)}")
    if "train" not in sources:
        raise MegarankError("no train source; give the training files")
    if not 0.0 <= val_fraction < 1.0:
        raise MegarankError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction > 0 and "val" in sources:
        raise MegarankError("both a val source and --val-fraction given; hold out documents only without a val set")
    if num_proc < 1:
        raise MegarankError(f"num_proc must be at least 1, got {num_proc}")
    if shard_tokens <= 0:
        raise MegarankError(f"shard_tokens must be positive, got {shard_tokens}; pass e.g. 50_000_000")


def held_out(seed: int, part_index: int, doc_index: int, fraction: float) -> bool:
    """Whether a document goes to val: a seeded hash of its place, so the choice needs no count of the
    documents, is the same in any worker and on a rerun, and holds out `fraction` of them on average."""
    return place_hash(seed, part_index, doc_index) < fraction * 2**64


def tokenize_part(job: PartJob, report: Report) -> dict:
    """Tokenize one part into its shard files (in the worker); returns the record progress.json keeps."""
    tokenizer = _tokenizer(job.tokenizer_path)
    writers = {name: ShardWriter(Path(job.staging) / name, tokenizer.vocab_size, job.shard_tokens,
                                 name_format=f"part_{job.part.index:05d}_{{:05d}}.bin") for name in job.outputs}
    n_docs = dict.fromkeys(job.outputs, 0)
    doc_index = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal doc_index
        tokens = {name: [] for name in job.outputs}
        for ids in tokenizer.encode_batch(batch, num_threads=1):
            name = job.outputs[0]
            if job.val_fraction and held_out(job.seed, job.part.index, doc_index, job.val_fraction):
                name = job.outputs[1]
            tokens[name] += ids
            tokens[name].append(tokenizer.eos_id)
            n_docs[name] += 1
            doc_index += 1
        for name, ids in tokens.items():
            writers[name].write(ids)
        report(len(batch), sum(len(text.encode("utf-8")) for text in batch), sum(map(len, tokens.values())))
        batch.clear()

    for text in part_texts(job.part, job.text_key):
        batch.append(text)
        if len(batch) == _ENCODE_DOCS:
            flush()
    flush()
    return {name: {"input": job.part.name, "identity": job.part.identity, "n_docs": n_docs[name],
                   "shards": writers[name].close()} for name in job.outputs}


_loaded: dict[str, Tokenizer] = {}


def _tokenizer(path: str) -> Tokenizer:
    if path not in _loaded:  # once per worker process
        _loaded[path] = Tokenizer(path)
    return _loaded[path]


def _size(job: PartJob) -> int:
    return job.part.identity.get("bytes", 0)  # largest first, so the last part to finish is a small one


def _finished(directory: Path, settings: dict) -> bool:
    """out/<split> is complete and was made with these settings (a rerun after the final renames)."""
    index = directory / INDEX_NAME
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("settings") == settings
    except json.JSONDecodeError:
        return False


def _open_staging(staging: Path, settings: dict, splits: list[str]) -> Path:
    progress_file = staging / PROGRESS_NAME
    if progress_file.is_file():
        left = json.loads(progress_file.read_text())["settings"]
        if left != settings:
            differ = sorted(k for k in settings if left.get(k) != settings[k])
            raise MegarankError(f"{staging} holds an interrupted run with other settings (differs in {differ}); "
                                f"rerun that command to finish it, or delete {staging}")
    else:
        for name in splits:
            (staging / name).mkdir(parents=True, exist_ok=True)
        _write_json(progress_file, {"settings": settings, "parts": {}})
    return progress_file


def _lock(staging: Path):
    """One run per output directory: a second one would write the same part files."""
    handle = open(staging / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise MegarankError(f"another preprocessing run is writing {staging.parent}; wait for it or stop it") from None
    return handle


def _recorded(progress_file: Path, jobs: list[PartJob]) -> dict:
    """The finished parts progress.json records whose input has not changed since (a changed file is redone)."""
    records = json.loads(progress_file.read_text())["parts"]
    identity = {job.key: job.part.identity for job in jobs}
    return {key: record for key, record in records.items()
            if key in identity and all(r["identity"] == identity[key] for r in record.values())}


def _remove_unrecorded(staging: Path, splits: list[str], records: dict) -> None:
    """Delete shard files no recorded part owns: those of a part that was in flight when the run stopped."""
    owned = {(name, s["file"]) for record in records.values() for name, r in record.items() for s in r["shards"]}
    for name in splits:
        for path in (staging / name).glob("*"):
            if (name, path.name) not in owned:
                path.unlink()


def _check_not_empty(out: Path, name: str, jobs: list[PartJob], records: dict, settings: dict) -> None:
    if sum(records[job.key][name]["n_docs"] for job in jobs if name in job.outputs) == 0:
        held = "no document fell in val; raise --val-fraction or give a val source" if name == "val" and \
            settings["val_fraction"] else "the input is empty, check its path and split"
        raise MegarankError(f"no documents for {out}: {held}")


def _finish_split(staging: Path, out: Path, name: str, jobs: list[PartJob], records: dict, settings: dict,
                  tokenizer: Tokenizer) -> None:
    """Write the split's index.json (shards in part order) and rename it into place."""
    parts = [(job, records[job.key][name]) for job in jobs if name in job.outputs]
    shards = [shard for _, record in parts for shard in record["shards"]]
    n_docs = sum(record["n_docs"] for _, record in parts)
    index = index_fields(shards, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, n_docs=n_docs)
    role = parts[0][0].role
    index.update({
        "source": settings["sources"][role],
        "source_split": settings["source_split"],
        "text_key": settings["text_key"],
        "tokenizer": str(tokenizer.model_path.resolve()),
        "tokenizer_sha256": tokenizer.sha256,
        "val_fraction": settings["val_fraction"],
        "seed": settings["seed"],
        "split": name,
        "parts": [{"input": r["input"], "n_docs": r["n_docs"], "n_tokens": sum(s["n_tokens"] for s in r["shards"]),
                   "n_shards": len(r["shards"])} for _, r in parts],
        "settings": settings,
    })
    _write_json(staging / INDEX_NAME, index)
    os.replace(staging, out)  # an existing empty out is replaced too


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, indent=1)


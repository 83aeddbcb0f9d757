"""Verified checkpoints: the completion marker records every file of its tag (relative path, size, sha256), so a
truncated, missing or corrupted file is found before a resume loads it or after a copy to another cluster.

The hashing is shared out: split_by_size gives each of `parts` workers (the ranks of a run, at save and at
resume) a share of the files of about equal bytes, the same on every rank since it depends only on the sizes.

sha256, streamed in 8 MiB chunks: on CPUs with SHA extensions (current x86 and ARM) hashlib's sha256 is faster
than blake2b, and `sha256sum FILE` checks one file by hand.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from megarank.ckpt.marker import COMPLETE_MARKER, Marker, MarkerError

_CHUNK = 8 << 20  # large enough that per-read overhead vanishes, small enough to keep memory flat


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def file_sizes(tag_dir: Path) -> dict[str, int]:
    """{relative path: bytes} of every file under tag_dir but the marker, sorted by path."""
    sizes = {}
    for path in sorted(tag_dir.rglob("*")):
        if path.is_file() and path.name != COMPLETE_MARKER:
            sizes[path.relative_to(tag_dir).as_posix()] = path.stat().st_size
    return sizes


def split_by_size(sizes: dict[str, int], parts: int) -> list[list[str]]:
    """The files dealt out to `parts` workers, largest first to the least loaded: shares of about equal bytes,
    the same on every rank."""
    shares: list[list[str]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        least = loads.index(min(loads))
        shares[least].append(name)
        loads[least] += sizes[name]
    return shares


def hash_files(tag_dir: Path, names: list[str], workers: int = 1) -> dict[str, str]:
    """{relative path: sha256} of `names`; hashlib releases the GIL, so threads hash files in parallel."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return dict(zip(names, pool.map(lambda name: sha256_of(tag_dir / name), names)))


def file_records(sizes: dict[str, int], digests: dict[str, str]) -> dict[str, dict]:
    """The marker's `files` entry: {relative path: {'size', 'sha256'}}."""
    return {name: {"size": sizes[name], "sha256": digests[name]} for name in sorted(sizes)}


def build_file_records(tag_dir: Path, workers: int = 1) -> dict[str, dict]:
    """file_records of every file of tag_dir, hashed here (one process)."""
    sizes = file_sizes(tag_dir)
    return file_records(sizes, hash_files(tag_dir, list(sizes), workers))


@dataclass(frozen=True)
class Problem:
    """Why a tag fails verification: the first bad file (relative to the tag) and what is wrong with it."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"'{self.file}' {self.reason}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking (a share of) one tag."""

    problem: Problem | None = None
    verifiable: bool = True  # False: its marker predates file records, so nothing could be checked
    n_files: int = 0
    n_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


def combine(verdicts: list[Verdict]) -> Verdict:
    """One verdict from the shares' verdicts (in rank order, so every rank that combines the same list agrees)."""
    problems = [v.problem for v in verdicts if v.problem is not None]
    return Verdict(problem=problems[0] if problems else None, verifiable=all(v.verifiable for v in verdicts),
                   n_files=sum(v.n_files for v in verdicts), n_bytes=sum(v.n_bytes for v in verdicts))


def verify_tag(tag_dir: Path, part: int = 0, parts: int = 1, workers: int = 1) -> Verdict:
    """Check share `part` of `parts` of the tag's recorded files: present, recorded size, recorded sha256.

    Sizes first, over the whole share, so a truncated file is reported before any hashing. Never raises for
    what is on disk: an unreadable marker or file is the verdict's problem."""
    try:
        records = Marker.read(tag_dir).files
    except MarkerError as err:
        return Verdict(problem=Problem(COMPLETE_MARKER, err.reason))
    if records is None:
        return Verdict(verifiable=False)
    names = split_by_size({name: r["size"] for name, r in records.items()}, parts)[part]
    return Verdict(problem=_first_problem(tag_dir, records, names, workers), n_files=len(names),
                   n_bytes=sum(records[name]["size"] for name in names))


def _first_problem(tag_dir: Path, records: dict[str, dict], names: list[str], workers: int) -> Problem | None:
    for name in names:
        path, recorded = tag_dir / name, records[name]["size"]
        if not path.is_file():
            return Problem(name, "is missing")
        size = path.stat().st_size
        if size != recorded:
            return Problem(name, f"has {size} bytes, the marker records {recorded} (truncated or partly copied)")
    try:
        digests = hash_files(tag_dir, names, workers)
    except OSError as err:  # a file that vanished or lost its permissions after the size check
        where = Path(err.filename).relative_to(tag_dir).as_posix() if err.filename else tag_dir.name
        return Problem(where, f"cannot be read ({err.strerror or err})")
    for name in names:
        if digests[name] != records[name]["sha256"]:
            return Problem(name, "does not match the sha256 the marker records (corrupted on disk or in a copy)")
    return None


"""The file records of megarank/ckpt/manifest.py against hashlib and the files themselves: sha256 streamed in
chunks equals hashing the whole bytes, the shares of the hashing partition the files with balanced bytes, and
verify_tag finds a missing, a truncated and a bit-flipped file, over one share or the combined ones."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from megarank.ckpt import manifest
from megarank.ckpt.manifest import (build_file_records, combine, file_sizes, sha256_of, split_by_size,
                                    verify_tag)
from megarank.ckpt.marker import COMPLETE_MARKER, Layout, Marker


def make_tag(root, sizes: dict[str, int]):
    """A tag of random files of the given sizes, committed with their records."""
    tag = root / "global_step4"
    rng = random.Random(0)
    for name, size in sizes.items():
        (tag / name).parent.mkdir(parents=True, exist_ok=True)
        (tag / name).write_bytes(rng.randbytes(size))
    Marker(step=4, layout=Layout(tp=1, dp=1, world_size=1), zero_stage=1,
           files=build_file_records(tag)).write(tag)
    return tag


SIZES = {"mp_rank_00_model_states.pt": 5000, "zero_pp_rank_0_mp_rank_00_optim_states.pt": 12000,
         "rng_rank0.pt": 300, "zero/wte.weight/fp32.pt": 7000, "empty.pt": 0}


def test_sha256_streams_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "_CHUNK", 1000)  # several chunks and a partial last one
    data = random.Random(1).randbytes(4321)
    (tmp_path / "f").write_bytes(data)
    assert sha256_of(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_records_hold_every_file_but_the_marker(tmp_path):
    tag = make_tag(tmp_path, SIZES)
    records = Marker.read(tag).files
    assert records == {name: {"size": size, "sha256": hashlib.sha256((tag / name).read_bytes()).hexdigest()}
                       for name, size in sorted(SIZES.items())}
    assert COMPLETE_MARKER not in file_sizes(tag)


@pytest.mark.parametrize("parts", [1, 2, 3, 16])
def test_shares_partition_the_files_with_balanced_bytes(parts):
    sizes = {f"f{i}": random.Random(i).randrange(1, 10_000) for i in range(40)}
    shares = split_by_size(sizes, parts)
    assert sorted(name for share in shares for name in share) == sorted(sizes)
    loads = [sum(sizes[name] for name in share) for share in shares]
    assert max(loads) - min(loads) <= max(sizes.values())  # greedy largest-first bound
    assert split_by_size(dict(reversed(sizes.items())), parts) == shares  # independent of listing order


def test_an_intact_tag_passes_whole_and_in_shares(tmp_path):
    tag = make_tag(tmp_path, SIZES)
    whole = verify_tag(tag)
    assert whole.ok and whole.verifiable and (whole.n_files, whole.n_bytes) == (5, sum(SIZES.values()))
    shares = [verify_tag(tag, part=r, parts=3) for r in range(3)]
    assert combine(shares) == whole


def flip_one_bit(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.unlink(), "is missing"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), "has 6999 bytes, the marker records 7000"),
    (lambda p: flip_one_bit(p, 3500), "does not match the sha256 the marker records"),
])
def test_a_damaged_file_is_named_by_the_share_that_holds_it(tmp_path, damage, reason):
    tag = make_tag(tmp_path, SIZES)
    damage(tag / "zero/wte.weight/fp32.pt")
    verdict = verify_tag(tag)
    assert verdict.problem.file == "zero/wte.weight/fp32.pt" and reason in verdict.problem.reason
    shares = [verify_tag(tag, part=r, parts=2) for r in range(2)]
    assert sum(not s.ok for s in shares) == 1  # only the rank hashing that file sees it
    assert combine(shares).problem == verdict.problem


def test_sizes_are_checked_before_anything_is_hashed(tmp_path, monkeypatch):
    tag = make_tag(tmp_path, SIZES)
    (tag / "rng_rank0.pt").write_bytes(b"")
    monkeypatch.setattr(manifest, "sha256_of", lambda path: pytest.fail("hashed before the size check"))
    assert "has 0 bytes" in verify_tag(tag).problem.reason


def test_old_and_broken_markers(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    old_marker = {"step": 4, "layout": {"tp": 1, "dp": 1, "world_size": 1}, "zero_stage": 1}
    (old / COMPLETE_MARKER).write_text(json.dumps(old_marker))  # written before file records
    assert verify_tag(old).ok and not verify_tag(old).verifiable
    assert not combine([verify_tag(old), verify_tag(make_tag(tmp_path, SIZES))]).verifiable
    (old / COMPLETE_MARKER).write_text(json.dumps({**old_marker, "files": {"a.pt": {"size": "big"}}}))
    assert verify_tag(old).problem.reason == "has a malformed 'files' record"
    (old / COMPLETE_MARKER).write_text('{"step": 4, ')
    assert verify_tag(old).problem.file == COMPLETE_MARKER
    (old / COMPLETE_MARKER).write_text(json.dumps({"step": 4}))  # no layout: not a marker megarank wrote
    assert verify_tag(old).problem.reason == "is not a valid megarank checkpoint marker (no valid 'layout')"

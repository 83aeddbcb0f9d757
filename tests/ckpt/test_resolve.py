"""The one tag resolver (megarank/ckpt/resolve.py) on checkpoint directories laid out by hand, against the rule
written out case by case: a complete tag is itself and a cut-short one is refused; a checkpoint dir gives the tag
`latest` names (when complete), else its newest complete one, and all its tags in step order (9 before 10); a
run dir gives the checkpoint.dir its config.yaml names, else <run>/checkpoints; nothing found is one line."""

from __future__ import annotations

import pytest
import yaml

from megarank.ckpt.resolve import checkpoint_dir_of, looks_like_checkpoint, resolve_tag, tags_at
from megarank.ckpt.tags import COMPLETE_MARKER
from megarank.errors import MegarankError


def checkpoints(ckpt_dir, complete=(2, 9, 10), cut_short=(11,), latest: str | None = "global_step10"):
    for step in (*complete, *cut_short):
        (ckpt_dir / f"global_step{step}").mkdir(parents=True)
    for step in complete:
        (ckpt_dir / f"global_step{step}" / COMPLETE_MARKER).write_text("{}")
    if latest is not None:
        (ckpt_dir / "latest").write_text(latest)
    return ckpt_dir


def test_a_tag_is_itself_and_a_cut_short_one_is_refused(tmp_path):
    ckpt = checkpoints(tmp_path / "checkpoints")
    assert resolve_tag(ckpt / "global_step2") == ckpt / "global_step2"
    assert tags_at(ckpt / "global_step2") == tags_at(ckpt / "global_step2", complete_only=False) == [
        ckpt / "global_step2"]
    for resolver in (resolve_tag, tags_at):
        with pytest.raises(MegarankError, match=r"global_step11' is an incomplete checkpoint \(no megarank_complete"):
            resolver(ckpt / "global_step11")


def test_a_checkpoint_dir_gives_latest_else_the_newest_complete(tmp_path):
    ckpt = checkpoints(tmp_path / "checkpoints")
    assert resolve_tag(ckpt) == ckpt / "global_step10"
    assert tags_at(ckpt) == [ckpt / "global_step2", ckpt / "global_step9", ckpt / "global_step10"]
    assert tags_at(ckpt, complete_only=False)[-1] == ckpt / "global_step11"
    (ckpt / "latest").write_text("global_step9")  # a run resumed from an older tag, saved nothing yet
    assert resolve_tag(ckpt) == ckpt / "global_step9"
    (ckpt / "latest").write_text("global_step11")  # names a cut-short tag: the newest complete one instead
    assert resolve_tag(ckpt) == ckpt / "global_step10"
    (ckpt / "latest").unlink()
    assert resolve_tag(ckpt) == ckpt / "global_step10"


def test_a_run_dir_gives_its_configured_checkpoint_dir(tmp_path):
    run = tmp_path / "run"
    default = checkpoints(run / "checkpoints", complete=(4,), cut_short=(), latest=None)
    assert checkpoint_dir_of(run) == default and resolve_tag(run) == default / "global_step4"
    elsewhere = checkpoints(tmp_path / "scratch", complete=(6, 8), cut_short=())
    (run / "config.yaml").write_text(yaml.safe_dump({"checkpoint": {"dir": str(elsewhere)}}))
    assert checkpoint_dir_of(run) == elsewhere
    assert resolve_tag(run) == elsewhere / "global_step8"  # `latest` names global_step10, not there
    assert tags_at(run) == [elsewhere / "global_step6", elsewhere / "global_step8"]
    (run / "config.yaml").write_text("checkpoint: [")
    with pytest.raises(MegarankError, match="config.yaml' is not valid YAML"):
        checkpoint_dir_of(run)


def test_nothing_found_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MegarankError) as caught:
        resolve_tag(tmp_path / "empty")
    assert str(caught.value) == (f"'{tmp_path / 'empty'}' holds no complete checkpoint (no global_step<N>/"
                                 f"{COMPLETE_MARKER} under '{tmp_path / 'empty' / 'checkpoints'}')")
    only_cut = checkpoints(tmp_path / "cut", complete=(), cut_short=(3,), latest=None)
    with pytest.raises(MegarankError, match="holds no complete checkpoint"):
        tags_at(only_cut)
    assert tags_at(only_cut, complete_only=False) == [only_cut / "global_step3"]
    with pytest.raises(MegarankError, match="is not a directory: pass a run dir"):
        resolve_tag(tmp_path / "missing")


def test_what_looks_like_a_checkpoint(tmp_path):
    ckpt = checkpoints(tmp_path / "run" / "checkpoints")
    for path in (tmp_path / "run", ckpt, ckpt / "global_step2", ckpt / "global_step11"):
        assert looks_like_checkpoint(path), path
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"")
    assert not looks_like_checkpoint(tmp_path / "hf") and not looks_like_checkpoint(tmp_path / "missing")

"""Bad input through the real `megarank-train` CLI: a one-line error naming the problem and the fix, exit 2,
no traceback, and nothing in an existing run directory touched."""

from __future__ import annotations

import pytest

from tests.helpers import TINY, run_cli


@pytest.fixture
def existing_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("earlier run's config\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return run_dir


CASES = {
    "unknown key": (["optim.wd_atn=0"], "unknown config key 'optim.wd_atn' (did you mean 'optim.wd_attn'?)"),
    "wrong type": (["train.max_steps=ten"], "config key 'train.max_steps'"),
    "missing data path": (["data.path=/no/such/shards"], "data.path '/no/such/shards'"),
    "seq_len beyond positions": (["model.max_positions=8"], "beyond the position table"),
    "indivisible global batch": (["train.global_batch=7"], "make global_batch a multiple of 2"),
    "bad override syntax": (["train.max_steps"], "is not key=value"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_error(case, existing_run, tiny_corpus):
    overrides, expected = CASES[case]
    before = {p.name: p.read_text() for p in existing_run.iterdir()}
    data = [] if case == "missing data path" else [f"data.path={tiny_corpus}"]
    proc = run_cli("configs/default.yaml", *TINY, *data, f"train.run_dir={existing_run}", *overrides)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert {p.name: p.read_text() for p in existing_run.iterdir()} == before


def test_missing_config_file(tmp_path):
    proc = run_cli(str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "nope.yaml' not found" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_none_refuses_to_overwrite_checkpoints(reference_run, tiny_corpus):
    before = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    proc = run_cli("configs/default.yaml", *TINY, f"data.path={tiny_corpus}", f"train.run_dir={reference_run}",
                   "train.resume=none")
    assert proc.returncode == 2 and "train.resume=none would overwrite them" in proc.stderr
    assert sorted(p.name for p in (reference_run / "checkpoints").iterdir()) == before

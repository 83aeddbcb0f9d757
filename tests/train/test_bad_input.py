"""Bad input through `megarank-train`'s entry point (cli.train_main, in this process: the error line and the exit
status are what is under test, not the start-up): a one-line error naming the problem and the fix, exit 2, no
traceback, and nothing in an existing run directory touched. A missing config file goes through the real
console process, and the exit status through the interpreter."""

from __future__ import annotations

import pytest

from megarank.cli import train_main
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


def train_cli(capsys, *args: str) -> tuple[int, str]:
    """train_main(ARGS) here: its exit status and everything it printed."""
    code = train_main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_error(case, existing_run, tiny_corpus, capsys):
    overrides, expected = CASES[case]
    before = {p.name: p.read_text() for p in existing_run.iterdir()}
    data = [] if case == "missing data path" else [f"data.path={tiny_corpus}"]
    code, output = train_cli(capsys, "configs/default.yaml", *TINY, *data, f"train.run_dir={existing_run}",
                             *overrides)
    assert code == 2
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], output[-2000:]
    assert "Traceback" not in output
    assert {p.name: p.read_text() for p in existing_run.iterdir()} == before


def test_missing_config_file(tmp_path):
    proc = run_cli(str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "nope.yaml' not found" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_none_refuses_to_overwrite_checkpoints(reference_run, tiny_corpus, capsys):
    before = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    code, output = train_cli(capsys, "configs/default.yaml", *TINY, f"data.path={tiny_corpus}",
                             f"train.run_dir={reference_run}", "train.resume=none")
    assert code == 2 and "train.resume=none would overwrite them" in output
    assert sorted(p.name for p in (reference_run / "checkpoints").iterdir()) == before

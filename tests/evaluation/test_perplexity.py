"""megarank-eval on the tiny 1-process `reference_run`:

- the windows tile the split: every token but the first is a target exactly once, for any length and seq_len;
- the perplexity equals a direct reference: the GPT rebuilt by hand from the training config, the checkpoint's
  state dict loaded as saved, each window scored alone through the model's own training loss (mean × length);
- a checkpoint whose marker lacks tensor records (as the landed main wrote them) evaluates to the same loss;
- the CLI writes the JSON it documents, where it documents (beside the run), for val and for a test split;
- bad input (not a checkpoint, a ViT, a missing split, data from another tokenizer) prints one `error:` line,
  exits 2 and writes nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from megarank.ckpt.tags import COMPLETE_MARKER
from megarank.config import DataInfo, load_config, resolve
from megarank.data.shards import TokenShards, write_shards
from megarank.data.stdlib_corpus import StdlibDataset, ensure_stdlib_test_split, stdlib_test_files
from megarank.evaluation import evaluate_checkpoint
from megarank.evaluation.cli import main
from megarank.evaluation.perplexity import token_windows
from megarank.models.gpt import GPT
from tests.helpers import REPO, TINY, clean_env

KEYS = {"split", "tokens", "loss", "ppl", "checkpoint", "step", "data", "seq_len", "weights", "layout"}


@pytest.fixture(scope="module")
def eval_corpus(tiny_corpus, tmp_path_factory):
    """A copy of the tiny corpus with a small test split (3 of the stdlib's regression-test files)."""
    root = tmp_path_factory.mktemp("eval_corpus") / "data"
    shutil.copytree(tiny_corpus, root, ignore=shutil.ignore_patterns("test"))
    dataset = StdlibDataset(root / "tokenizer.model", root / "train", root / "val")
    ensure_stdlib_test_split(dataset, test_files=stdlib_test_files()[::6][:3], show_progress=False)
    return root


@pytest.mark.parametrize("n_tokens", [2, 3, 16, 17, 18, 100])
@pytest.mark.parametrize("seq_len", [1, 4, 16])
def test_windows_predict_every_token_once(n_tokens, seq_len):
    windows = token_windows(n_tokens, seq_len)
    targets = [pos for start, length in windows for pos in range(start + 1, start + length + 1)]
    assert targets == list(range(1, n_tokens))
    assert all(length == seq_len for _, length in windows[:-1]) and 0 < windows[-1][1] <= seq_len


def direct_reference(run_dir, corpus, tag: str, split: str = "val") -> tuple[int, float]:
    """(predicted tokens, mean NLL): the GPT built as training builds it, one window at a time."""
    cfg = load_config("configs/default.yaml", [*TINY, f"data.path={corpus}"])
    cfg = resolve(cfg, DataInfo(vocab_size=TokenShards(corpus / "train").vocab_size))
    model = GPT(cfg.model).eval()
    states = torch.load(run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=False)
    model.load_state_dict(states["module"])  # strict: every saved tensor, the tied head included
    tokens = torch.from_numpy(TokenShards(corpus / split).read(0, TokenShards(corpus / split).n_tokens))
    T, total, count = cfg.model.seq_len, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, T):
            window = tokens[start:start + T + 1]
            x, y = window[:-1].unsqueeze(0), window[1:].unsqueeze(0)
            total += model(x, y).item() * y.numel()
            count += y.numel()
    return count, total / count


def test_matches_direct_reference(reference_run, tiny_corpus):
    result = evaluate_checkpoint(reference_run, split="val", batch_size=3, progress=False)
    tokens, loss = direct_reference(reference_run, tiny_corpus, "global_step8")
    assert result["tokens"] == tokens == TokenShards(tiny_corpus / "val").n_tokens - 1
    assert result["step"] == 8 and result["layout"] == {"tp": 1, "dp": 1, "zero_stage": 1}
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
    # the batch size only groups windows: the same sum up to float32 rounding inside each forward pass
    again = evaluate_checkpoint(reference_run, split="val", batch_size=64, progress=False)
    assert again["tokens"] == result["tokens"] and again["loss"] == pytest.approx(result["loss"], rel=1e-6)


def test_a_marker_without_tensor_records_evaluates_the_same(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir, ignore=shutil.ignore_patterns("eval_*.json"))
    marker_file = run_dir / "checkpoints" / "global_step8" / COMPLETE_MARKER
    marker = json.loads(marker_file.read_text())
    del marker["tensors"]
    marker_file.write_text(json.dumps(marker))
    old, new = (evaluate_checkpoint(run, split="val", progress=False) for run in (run_dir, reference_run))
    assert old["tokens"] == new["tokens"] and old["loss"] == new["loss"]


def test_cli_writes_eval_json_beside_the_run(reference_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir, ignore=shutil.ignore_patterns("eval_*.json"))
    assert main([str(run_dir / "checkpoints" / "global_step4"), "--split", "val", "--no-progress"]) == 0
    written = json.loads((run_dir / "eval_val.json").read_text())
    assert set(written) == KEYS and written["split"] == "val" and written["step"] == 4
    assert written["checkpoint"] == str(run_dir / "checkpoints" / "global_step4")
    assert written["data"].endswith("/val") and written["ppl"] == pytest.approx(math.exp(written["loss"]))
    assert f"wrote {run_dir / 'eval_val.json'}" in capsys.readouterr().out
    assert sorted(p.name for p in run_dir.glob("*eval*")) == ["eval_val.json"]  # no temp file left


def test_test_split_counts_every_token(reference_run, eval_corpus, tmp_path):
    out = tmp_path / "sub" / "eval.json"
    assert main([str(reference_run), "--split", "test", "--data", str(eval_corpus), "--out", str(out),
                 "--batch-size", "16", "--no-progress"]) == 0
    written = json.loads(out.read_text())
    assert written["tokens"] == TokenShards(eval_corpus / "test").n_tokens - 1
    assert written["data"] == str(eval_corpus / "test") and written["step"] == 8
    tokens, loss = direct_reference(reference_run, eval_corpus, "global_step8", split="test")
    assert written["tokens"] == tokens and written["loss"] == pytest.approx(loss, rel=1e-6)


def run_cli_error(capsys, *argv) -> str:
    """main() on argv: exit 2, one `error:` line and nothing else on stderr; returns that line."""
    capsys.readouterr()
    rc = main([*map(str, argv), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def user_data(root, tiny_corpus, *, vocab_size: int | None = None, tokenizer_sha256: str | None = None):
    """A tools/preprocess.py-style data dir: train/ copied, val/ rewritten with the given index fields."""
    shutil.copytree(tiny_corpus / "train", root / "train")
    val = TokenShards(tiny_corpus / "val")
    meta = {"tokenizer_sha256": tokenizer_sha256 or val.meta["tokenizer_sha256"]}
    write_shards([val.read(0, 100).tolist()], root / "val", vocab_size=vocab_size or val.vocab_size,
                 eos_id=val.eos_id, extra_meta=meta)
    return root


def test_bad_input_exits_2_with_one_line(reference_run, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "out.json"
    (tmp_path / "empty").mkdir()
    assert "is not a megarank checkpoint" in run_cli_error(capsys, tmp_path / "empty", "--out", out)
    assert "is not a megarank checkpoint" in run_cli_error(capsys, tmp_path / "missing", "--out", out)

    vit = tmp_path / "vit" / "global_step1"
    vit.mkdir(parents=True)
    model = {"family": "vit", "n_layers": 2, "d_model": 32, "n_heads": 4}
    (vit / COMPLETE_MARKER).write_text(json.dumps({"step": 1, "layout": {"tp": 1, "dp": 1, "world_size": 1},
                                                   "zero_stage": 1, "config": yaml.safe_dump({"model": model})}))
    assert "is a vit checkpoint" in run_cli_error(capsys, vit, "--out", out)

    plain = user_data(tmp_path / "plain", tiny_corpus)  # no test/, and not a stdlib cache that could build one
    assert "has no test split" in run_cli_error(capsys, reference_run, "--data", plain, "--out", out)
    wide = user_data(tmp_path / "wide", tiny_corpus, vocab_size=4096)
    assert "4096-token vocabulary, the model has 512" in run_cli_error(capsys, reference_run, "--split", "val",
                                                                         "--data", wide, "--out", out)
    other = user_data(tmp_path / "other", tiny_corpus, tokenizer_sha256="0" * 64)
    assert "another tokenizer" in run_cli_error(capsys, reference_run, "--split", "val", "--data", other,
                                                "--out", out)
    assert "--batch-size" in run_cli_error(capsys, reference_run, "--batch-size", "0", "--out", out)
    assert not out.exists() and not list(reference_run.glob("eval_*.json"))


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from megarank.evaluation.cli import main; raise SystemExit(main())",
                           str(tmp_path)], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ") and proc.stdout == ""

"""megarank-export (megarank/hf/export.py, export_cli.py) against `transformers` as the reference: the exported
directory, loaded with AutoModelForCausalLM.from_pretrained, gives the logits megarank's own GPT of the same
checkpoint gives (megarank/evaluation/load.py) within 1e-5 in fp32, on the run's validation tokens, for the
one-process run (`reference`, as GPT-2), the TP=2 × ZeRO-3 run (`tp2-zero3`, as GPT-2) and the tiny LLaMA with
q/k norms (`llama-reference`, as Qwen3: RMSNorm, SwiGLU, GQA, RoPE) of tests/runs.py; AutoTokenizer on the
export encodes text to the ids megarank's SentencePiece tokenizer gives. A non-empty --out and a missing
tokenizer are one-line errors (exit 2) that write nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megarank.data.shards import TokenShards
from megarank.data.tokenizer import Tokenizer
from megarank.evaluation.load import load_gpt
from tests.helpers import REPO, clean_env

transformers = pytest.importorskip("transformers")

TEXTS = ["def f(x):\n\treturn x  # a comment\n\n", "  indented   runs of spaces\t\ttabs", "numbers 12345 and 3.14",
         "ünïcødé, emoji 😀 and CJK あい (byte fallback)", "<s> </s> <unk> as plain text", "", " ", "x" * 100]


def export(path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megarank.hf.export_cli", str(path), "--out", str(out), *extra],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)


FAMILY = {"reference": ("gpt2", "GPT2LMHeadModel"), "tp2-zero3": ("gpt2", "GPT2LMHeadModel"),
          "llama-reference": ("qwen3", "Qwen3ForCausalLM")}
"""The launched run -> the family its export is and the class transformers builds from it."""


@pytest.fixture(scope="module", params=tuple(FAMILY))
def exported(request, launched, tmp_path_factory):
    run_dir = launched(request.param)
    out = tmp_path_factory.mktemp("export") / request.param
    proc = export(run_dir, out)
    assert proc.returncode == 0, proc.stderr
    return run_dir, out, proc.stdout, request.param


def test_logits_under_transformers_equal_megarank(exported, tiny_corpus):
    run_dir, out, stdout, name = exported
    family, architecture = FAMILY[name]
    assert family in stdout and "step 8" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                      "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    ours = load_gpt(run_dir).model
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(theirs).__name__ == architecture
    assert theirs.config.vocab_size == ours.cfg.vocab_size  # the padded vocabulary the run trained
    val = TokenShards(tiny_corpus / "val")
    batch = torch.from_numpy(val.read(0, 4 * 16).astype("int64")).view(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs(batch).logits, ours(batch), rtol=0, atol=1e-5)


def test_tokenizer_gives_megarank_ids(exported, tiny_corpus):
    _, out, _, _ = exported
    ours = Tokenizer(tiny_corpus / "tokenizer.model")
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    texts = TEXTS + [p.read_text(encoding="utf-8")[:3000] for p in sorted(Path(torch.__file__).parent.glob("*.py"))[:20]]
    for text in texts:
        assert theirs(text)["input_ids"] == ours.encode(text), text[:40]
        assert theirs.decode(ours.encode(text)) == text
    assert (theirs.bos_token_id, theirs.eos_token_id) == (ours.bos_id, ours.eos_id)


def test_non_empty_out_and_missing_tokenizer_are_one_line_errors(reference_run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    proc = export(reference_run, taken)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not an empty directory" in proc.stderr
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
    proc = export(reference_run, tmp_path / "new", "--tokenizer", str(tmp_path / "nope.model"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--tokenizer" in proc.stderr
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.*"))

"""lm-evaluation-harness on a megarank-export directory, offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE): `lm_eval
run --model hf` on a small multiple-choice task this test writes (a YAML task over a local JSON-lines file,
--include_path) produces an accuracy, and each log-likelihood it logged equals the one megarank's own GPT of the
exported checkpoint (megarank/evaluation/load.py) gives the same text, tokenized by megarank's tokenizer
(1e-4, fp32). The checkpoint is the shared one-process `reference` run (tests/runs.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from megarank.data.tokenizer import Tokenizer
from megarank.evaluation.load import load_gpt
from tests.helpers import REPO, clean_env

ROWS = [{"question": "def f(x):\n    return", "choices": [" x", " 1/0"], "answer": 0},
        {"question": "import", "choices": [" os", " ???"], "answer": 0},
        {"question": "for i in", "choices": [" range(3):", " )("], "answer": 0}]


def write_task(where) -> None:
    (where / "tiny.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (where / "tiny.yaml").write_text(f"""task: megarank_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {where / "tiny.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")


def loglikelihood(model, tokenizer: Tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) as lm-eval's HF model splits the pair: the context's trailing spaces move
    to the continuation, the whole is tokenized at once and the context's tokens are cut off its front."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, n_context = tokenizer.encode(context + continuation), len(tokenizer.encode(context))
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids[:, :-1]).double(), dim=-1)[0]  # (T-1, vocab)
    targets = ids[0, n_context:]
    return float(logprobs[n_context - 1:].gather(1, targets[:, None]).sum())


def test_lm_eval_runs_offline_on_an_export(reference_run, tiny_corpus, tmp_path):
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "megarank.hf.export_cli", str(reference_run), "--out", str(out)],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_task(tasks)
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={out},dtype=float32",
         "--tasks", "megarank_tiny", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "2",
         "--output_path", str(results), "--log_samples"],
        cwd=tmp_path, env=clean_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (summary,) = results.rglob("results_*.json")
    accuracy = json.loads(summary.read_text())["results"]["megarank_tiny"]["acc,none"]
    assert 0.0 <= accuracy <= 1.0
    (samples,) = results.rglob("samples_megarank_tiny_*.jsonl")
    model, tokenizer = load_gpt(reference_run).model, Tokenizer(tiny_corpus / "tokenizer.model")
    logged = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(logged) == len(ROWS)
    for sample in logged:
        row = ROWS[sample["doc_id"]]
        ours = [loglikelihood(model, tokenizer, row["question"], choice) for choice in row["choices"]]
        theirs = [float(resp[0]) for resp in sample["filtered_resps"]]
        assert theirs == pytest.approx(ours, rel=0, abs=1e-4), row
        assert sample["acc"] == float(max(range(len(ours)), key=ours.__getitem__) == row["answer"])

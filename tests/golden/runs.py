"""The golden runs, shared by the test and by `python -m tests.golden.regenerate`: a tiny GPT and a tiny LLaMA
(configs/llama_cpu_small.yaml at tests/helpers.py LLAMA_TINY: the GPT family with RMSNorm, SwiGLU, GQA, q/k
norms) on the test corpus and a tiny ViT on the embedded digits, each trained in one process from a fixed seed, reduced to what
the golden files hold (per-step training losses, the final validation metrics, the data they saw)."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

from tests.helpers import LLAMA_TINY, TINY, VIT_TINY, read_metrics, run_training

GOLDEN_DIR = Path(__file__).parent
# Short enough that float noise stays float noise: from about step 40 the ViT's trajectory amplifies a 1e-7
# difference (another thread count: another summation order) ~1000× every 10 steps, so a longer golden run
# could only be compared loosely. 30 steps of it stay within 1e-6 of the stored losses at 1 or 2 threads.
GPT_STEPS, VIT_STEPS = 30, 30

RUNS = {
    "gpt_tiny": dict(config="configs/default.yaml", tiny=TINY,
                     extra=(f"train.max_steps={GPT_STEPS}", f"train.eval_every={GPT_STEPS}", "train.eval_batches=4",
                            "optim.lr=3e-3", "checkpoint.every=0", "analysis.every=0")),
    "gpt_llama_tiny": dict(config="configs/llama_cpu_small.yaml", tiny=LLAMA_TINY,
                           extra=(f"train.max_steps={GPT_STEPS}", f"train.eval_every={GPT_STEPS}",
                                  "train.eval_batches=4", "optim.lr=3e-3", "checkpoint.every=0", "analysis.every=0")),
    "vit_tiny": dict(config="configs/vit_default.yaml", tiny=VIT_TINY,
                     extra=(f"train.max_steps={VIT_STEPS}", f"train.eval_every={VIT_STEPS}", "train.eval_batches=6",
                            "train.micro_batch=64", "train.global_batch=64", "optim.lr=1e-3", "checkpoint.every=0",
                            "analysis.every=0")),
}


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json"


def data_fingerprint(corpus: Path | None) -> str:
    """sha256 over the token shards and tokenizer (GPT) — the inputs a Python or sentencepiece change could
    move before training does; the ViT's digits ship with scikit-learn and are pinned with it."""
    if corpus is None:
        return "digits"
    digest = hashlib.sha256()
    for path in sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix in (".bin", ".model")):
        digest.update(path.relative_to(corpus).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def golden_record(name: str, run_dir: Path, corpus: Path | None) -> dict:
    """Train the named run into run_dir and reduce it to a golden record."""
    spec = RUNS[name]
    run_training(run_dir, corpus, *spec["extra"], config=spec["config"], tiny=spec["tiny"])
    records = read_metrics(run_dir)
    losses = {str(r["step"]): r["loss"] for r in records if "loss" in r}
    final = {k: v for r in records if "val_loss" in r for k, v in r.items() if k.startswith("val_")}
    return {"run": name, "overrides": [*spec["tiny"], *spec["extra"]], "config": spec["config"],
            "data": data_fingerprint(corpus), "python": platform.python_version(), "losses": losses,
            "final": final}


def write_golden(record: dict) -> Path:
    path = golden_path(record["run"])
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path

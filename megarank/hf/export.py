"""A megarank GPT checkpoint as a Hugging Face directory that `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load: model.safetensors, config.json, generation_config.json and the run's
tokenizer (megarank/hf/tokenizer.py).

The weights are the checkpoint's GPT at TP=1 as megarank-eval loads it (megarank/evaluation/load.py: any TP size,
DP size or ZeRO stage, offline), in fp32, mapped by megarank/hf/layouts.py. The vocabulary stays the padded one
the run trained (the padded rows are never produced by the tokenizer). Written into a temp directory beside
`out` and renamed into place: `out` either does not exist or is complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from megarank.errors import MegarankError
from megarank.evaluation.load import load_gpt
from megarank.hf.layouts import BOS_ID, EOS_ID, export_layout, hf_config, to_hf_state
from megarank.hf.tokenizer import run_tokenizer, write_tokenizer


def check_out(out: Path) -> None:
    """A fresh --out: absent or an empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MegarankError(f"--out '{out}' exists and is not an empty directory; pass a new directory")


def export_checkpoint(path: str | Path, out: str | Path, *, tokenizer: str | Path | None = None,
                      weights: str = "module") -> dict:
    """Write the HF directory `out` for the checkpoint `path` (run dir, checkpoint dir or tag); returns a summary
    {'checkpoint', 'step', 'family', 'layout', 'tokenizer', 'out'}."""
    out = Path(out).expanduser()
    check_out(out)
    loaded = load_gpt(path, weights=weights)
    cfg = loaded.model.cfg
    layout = export_layout(cfg)
    tokenizer_path = Path(tokenizer).expanduser() if tokenizer is not None else run_tokenizer(loaded.marker)
    if not tokenizer_path.is_file():
        raise MegarankError(f"--tokenizer '{tokenizer_path}' is not a file; pass the run's SentencePiece .model")
    tensors = to_hf_state(layout, cfg, loaded.model.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(hf_config(layout, cfg), indent=2) + "\n")
        # megarank trains with EOS between documents and no BOS: generation stops at EOS
        (staging / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID}, indent=2) + "\n")
        write_tokenizer(tokenizer_path, staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would leave the export private
        if out.is_dir():  # empty (checked above)
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"checkpoint": str(loaded.tag_dir), "step": loaded.step, "family": layout.name, "layout": loaded.layout,
            "tokenizer": str(tokenizer_path), "out": str(out)}

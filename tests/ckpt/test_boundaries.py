"""The checkpoint format is readable offline: importing megarank/ckpt (but its tensor reader) pulls in neither
torch nor DeepSpeed; the offline tools (megarank-rank, megarank-eval, megarank-ckpt) and their checkpoint
readers import nothing from megarank.train or megarank.parallel (TP styles come from the marker); and
evaluation reads checkpoints through megarank/ckpt, not through analysis' reader — checked in a fresh
interpreter, against the modules it actually loaded."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def loaded_after(*modules: str) -> set[str]:
    code = f"import json, sys\nfor m in {list(modules)!r}: __import__(m)\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True)
    return set(json.loads(out.stdout))


def test_ckpt_needs_no_torch():
    loaded = loaded_after("megarank.ckpt.cli", "megarank.ckpt.retention", "megarank.ckpt.resolve",
                          "megarank.ckpt.marker", "megarank.ckpt.space")
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "deepspeed")}


def test_offline_tools_import_nothing_from_training():
    loaded = loaded_after("megarank.analysis.cli", "megarank.evaluation.cli", "megarank.sweep.cells",
                          "megarank.analysis.readers.megarank_ckpt", "megarank.evaluation.load")
    assert not {m for m in loaded if m.startswith(("megarank.train", "megarank.parallel", "deepspeed"))}


def test_evaluation_reads_checkpoints_through_ckpt():
    loaded = loaded_after("megarank.evaluation.cli", "megarank.evaluation.load")
    assert "megarank.ckpt.shards" in loaded and not {m for m in loaded if m.startswith("megarank.analysis")}

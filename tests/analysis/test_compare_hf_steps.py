"""`megarank-rank compare` over Hugging Face directories, one per training step of one model (Pythia-style): three
tiny GPT-NeoX models saved as pythia-tiny/step0, step1000 and step143000 (given out of order) against their own
single analyses (each row's means), the step read from each directory's name on the x axis; how names give
steps; and --x step refused, naming the fix, for a directory whose name gives none."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import transformers  # a declared test dependency (setup.py extras 'dev')

from megarank.analysis.cli import main
from megarank.analysis.compare import step_from_name
from megarank.analysis.readers import open_source
from megarank.analysis.report import analyse
from megarank.analysis.spectra import DEFAULT_ATOL, DEFAULT_RTOL, METRICS
from tests.analysis.test_megarank_ckpt import run_cli_error

STEPS = (1000, 0, 143000)


@pytest.fixture(scope="module")
def pythia_steps(tmp_path_factory):
    """pythia-tiny/step<N> for N in STEPS: the same tiny GPT-NeoX geometry, a different seed per step."""
    root = tmp_path_factory.mktemp("hf") / "pythia-tiny"
    for seed, step in enumerate(STEPS):
        torch.manual_seed(seed)
        config = transformers.GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4)
        transformers.GPTNeoXForCausalLM(config).save_pretrained(root / f"step{step}", safe_serialization=True)
    return [root / f"step{step}" for step in STEPS]


@pytest.mark.parametrize("name, step", [("step1000", 1000), ("checkpoint-1000", 1000), ("global_step1000", 1000),
                                        ("iter_0001000", 1000), ("pythia-70m-step143000", 143000),
                                        ("step_5", 5), ("pythia-70m", None), ("mystep5", None), ("step", None)])
def test_step_from_the_directory_name(name, step):
    assert step_from_name(f"/models/{name}") == step


def test_compare_plots_rank_against_the_step_in_each_name(pythia_steps, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, pythia_steps), "--out", str(out), "--no-progress"]) == 0
    document = json.loads((out / "compare.json").read_text())
    assert document["x"] == "step" and document["files"] == ["compare.csv", "compare.png"]
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["label"], r["step"], r["family"], r["product"]) for r in rows] == [
        (f"step{s}", str(s), "gpt_neox", p) for s in STEPS for p in ("qk", "ov")]
    for path in pythia_steps:
        with open_source(path) as source:
            table = analyse(source, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, progress=False)
        for product in ("qk", "ov"):
            row = next(r for r in rows if r["source"] == str(path) and r["product"] == product)
            for name in METRICS:
                assert float(row[name]) == pytest.approx(table.metrics[product][name].mean(), rel=1e-12)
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_step_axis_needs_a_step_in_every_name(pythia_steps, tmp_path, capsys):
    renamed = pythia_steps[0].parent / "final"
    renamed.mkdir()
    for file in pythia_steps[0].iterdir():
        (renamed / file.name).write_bytes(file.read_bytes())
    line = run_cli_error(capsys, "compare", pythia_steps[1], renamed, "--x", "step", "--out", tmp_path / "out")
    assert f"--x step: '{renamed}' records no step" in line and "step1000 or checkpoint-1000" in line
    assert "use --x index" in line and not (tmp_path / "out").exists()
    assert main(["compare", str(pythia_steps[1]), str(renamed), "--out", str(tmp_path / "auto"), "--no-plots",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "auto" / "compare.json").read_text())["x"] == "index"

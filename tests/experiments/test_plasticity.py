"""plasticity at a tiny size, through `megarank-exp` (real pretraining and fine-tuning runs): each row of summary.json
against direct computations on the runs it names — megarank-eval's val perplexity of the pretrained checkpoint on
the code corpus and on the prose corpus and of the fine-tuned one, megarank-rank of both checkpoints, Σ lr·λ from
the pretraining run's own metrics.jsonl — and the fine-tune against its source (init_from, the prose data made
with the pretrained tokenizer, one recipe for every λ); the config's checks against a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from megarank.experiments.cli import main as exp_main
from tests.helpers import TINY, read_metrics


@pytest.fixture(scope="module")
def plasticity(tiny_corpus, tmp_path_factory) -> Path:
    """λ ∈ {0, 2}, one seed: 3 pretraining steps on the tiny code corpus, 2 fine-tuning steps on the prose."""
    root = tmp_path_factory.mktemp("plasticity")
    config = root / "plasticity.yaml"
    config.write_text(yaml.safe_dump({
        "base": "configs/default.yaml", "wd": [0.0, 2.0], "seeds": [3],
        "pretrain_overrides": [*TINY, f"data.path={tiny_corpus}", f"data.tokenizer={tiny_corpus}/tokenizer.model",
                               f"data.cache_dir={root}/cache", "train.max_steps=3", "analysis.every=0",
                               "checkpoint.every=0"],
        "finetune_overrides": [*TINY, f"data.cache_dir={root}/cache", "train.max_steps=2", "analysis.every=0",
                               "checkpoint.every=0"],
        "run_root": str(root / "cells"), "out_dir": str(root / "out"), "eval_batch_size": 4, "rank_drop_min": 0.0}))
    assert exp_main(["plasticity", "--config", str(config), "--no-progress"]) == 0
    return root


def test_rows_are_the_runs_measured_directly(plasticity, tiny_corpus):
    from megarank.analysis.readers import open_source
    from megarank.analysis.report import analyse
    from megarank.evaluation import evaluate_checkpoint

    def ppl(run, data=None):
        return evaluate_checkpoint(run, split="val", data=data, batch_size=4, progress=False)["ppl"]

    summary = json.loads((plasticity / "out" / "summary.json").read_text())
    assert summary["experiment"] == "plasticity" and summary["missing"] == []
    assert [r["wd"] for r in summary["rows"]] == [0.0, 2.0] and [r["seeds"] for r in summary["rows"]] == [[3], [3]]
    prose = Path(summary["prose_data"])
    for row, run in zip(summary["rows"], summary["runs"]):
        pre, tuned = Path(run["pretrain_dir"]), Path(run["finetune_dir"])
        assert pre == plasticity / "cells" / "pretrain" / f"wd{row['wd']:g}" / "seed3"
        assert tuned == plasticity / "cells" / "finetune" / f"wd{row['wd']:g}" / "seed3"
        assert row["code_ppl"] == pytest.approx(ppl(pre, tiny_corpus), rel=1e-9)
        assert row["prose_ppl_before"] == pytest.approx(ppl(pre, prose), rel=1e-9)
        assert row["prose_ppl"] == pytest.approx(ppl(tuned), rel=1e-9)
        assert row["code_ppl_after"] == pytest.approx(ppl(tuned, tiny_corpus), rel=1e-9)
        lrs = [r["lr"] for r in read_metrics(pre) if "lr" in r]
        assert len(lrs) == 3 and row["total_decay"] == pytest.approx(row["wd"] * sum(lrs))
        for key, run_dir in (("qk_rank", pre), ("qk_rank_after", tuned)):
            with open_source(run_dir) as source:
                assert row[key] == pytest.approx(analyse(source, rtol=0.01, atol=1e-3, progress=False)
                                                 .means()["qk"]["rank"])


def test_finetune_starts_from_the_pretrained_run_on_prose(plasticity, tiny_corpus):
    """The fine-tune's config: init_from its pretrained run, the prose corpus tokenized with the pretrained
    tokenizer, the fine-tune recipe's decay (not the pretraining λ); the pretraining run got λ on attn and MLP."""
    for wd in (0.0, 2.0):
        pre = yaml.safe_load((plasticity / "cells" / "pretrain" / f"wd{wd:g}" / "seed3" / "config.yaml").read_text())
        tuned = yaml.safe_load((plasticity / "cells" / "finetune" / f"wd{wd:g}" / "seed3" / "config.yaml")
                               .read_text())
        assert pre["optim"]["wd_attn"] == pre["optim"]["wd_mlp"] == wd and pre["optim"]["wd_other"] == 0.01
        assert tuned["train"]["init_from"] == str(plasticity / "cells" / "pretrain" / f"wd{wd:g}" / "seed3")
        assert (tuned["optim"]["wd_attn"], tuned["optim"]["wd_mlp"]) == (0.1, 0.05)  # TINY's, for every λ
        assert tuned["data"]["tokenizer"] == f"{tiny_corpus}/tokenizer.model"
        assert Path(tuned["data"]["path"]).name.startswith("pydoc-prose-")
        index = json.loads((Path(tuned["data"]["path"]) / "train" / "index.json").read_text())
        code = json.loads((tiny_corpus / "train" / "index.json").read_text())
        assert index["source"] == "pydoc_data.topics" and index["tokenizer_sha256"] == code["tokenizer_sha256"]


def test_report_files(plasticity):
    out = plasticity / "out"
    report = (out / "report.md").read_text()
    assert "plasticity" in report and "prose val perplexity after fine-tuning" in report
    assert "(plasticity.png)" in report and (out / "plasticity.png").stat().st_size > 1000
    assert {"rows.csv", "runs.csv", "summary.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in summary["checks"]][2].startswith("prose val perplexity after fine-tuning falls")


@pytest.mark.parametrize("override, message", [
    ("wd=[1.0,0.0]", "wd must hold at least two distinct decays in rising order"),
    ("wd_keys=[train.max_steps]", "wd_keys must name optim.wd_* keys"),
])
def test_bad_config_is_one_line(override, message, tmp_path, capsys):
    assert exp_main(["plasticity", override, f"out_dir={tmp_path}/out", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_gathering_lists_a_missing_fine_tune(plasticity, tmp_path):
    """run_missing=false with one fine-tune gone: the other λ is tabulated, the gone run listed, nothing trained."""
    import shutil

    config = yaml.safe_load((plasticity / "plasticity.yaml").read_text())
    shutil.copytree(plasticity / "cells", tmp_path / "cells")
    shutil.rmtree(tmp_path / "cells" / "finetune" / "wd2")
    config.update(run_root=str(tmp_path / "cells"), out_dir=str(tmp_path / "out"), run_missing=False)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    assert exp_main(["plasticity", "--config", str(tmp_path / "p.yaml"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["missing"] == ["finetune/wd2/seed3"] and [r["wd"] for r in summary["rows"]] == [0.0]
    assert not (tmp_path / "cells" / "finetune" / "wd2").exists()
    assert "Missing cells" in (tmp_path / "out" / "report.md").read_text()

"""train.init_from (megarank/hf/init_from.py and its hook in megarank/train/loop.py) through real launched runs:

- from a Hugging Face GPT-2 directory this test saves (`transformers`, non-zero biases, exact GELU): the first
  step's logged loss equals `transformers`' loss of that model on the same global batch (fp32, 1e-5), in one
  process and at TP=2 × ZeRO-3 over two processes (weights loaded whole, then sliced and partitioned);
- from a Hugging Face LLaMA directory this test saves (LlamaForCausalLM: GQA with 2 K/V heads for 4 query heads,
  so TP=2 gives each rank one K/V head; non-zero q/k/v/o and MLP biases and norm gains; untied head): the first
  step's logged loss equals `transformers`' at TP=2 × ZeRO-3 over two processes (TP=1's logits:
  tests/hf/test_llama_layouts.py);
- from a megarank tag (the shared `reference` run's step 4): the first step's loss equals the loss megarank's
  own GPT of that tag (megarank/evaluation/load.py) gives on the new run's first batch — the weights are the
  tag's, the data position is the new run's (0);
- a model key given with another value than the source's is a one-line error (exit 2) naming both values;
- a run dir that already has a checkpoint resumes from it: init_from then only supplies the model keys.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megarank.config.schema import DataConfig
from megarank.data.batches import micro_batch
from megarank.data.training_data import open_text_data
from megarank.evaluation.load import load_gpt
from tests.helpers import read_metrics, run_training, train_losses

transformers = pytest.importorskip("transformers")

ONE_STEP = ("train.max_steps=1", "checkpoint.every=0")
MICRO, GLOBAL, SEQ = 2, 8, 16  # tests/helpers.py TINY's micro_batch, global_batch, seq_len
SEED = 1234  # ExperimentConfig.seed


def first_batch(corpus) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The micro batches of the first global batch a one-data-parallel-rank run on `corpus` trains on."""
    data = open_text_data(DataConfig(path=str(corpus)), seq_len=SEQ, seed=SEED, show_progress=False)
    return [micro_batch(data, batch_start=0, micro_step=m, dp_rank=0, dp_size=1, micro_batch=MICRO,
                        device=torch.device("cpu")) for m in range(GLOBAL // MICRO)]


def mean_loss(logits_of, batches) -> float:
    """The global batch's mean next-token loss, as the run logs it (equal micro batches: mean of their means)."""
    with torch.no_grad():
        losses = [F.cross_entropy(logits_of(x).flatten(0, 1).double(), y.flatten()) for x, y in batches]
    return float(torch.stack(losses).mean())


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """A tiny GPT-2 with exact GELU and non-zero biases, saved by `transformers` (safetensors)."""
    torch.manual_seed(3)
    config = transformers.GPT2Config(vocab_size=512, n_positions=SEQ, n_embd=32, n_layer=2, n_head=4,
                                     activation_function="gelu", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(std=0.05)
    out = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(out)
    return out, model


@pytest.mark.parametrize("layout", [(), ("parallel.tp=2", "zero.stage=3")], ids=["tp1", "tp2-zero3"])
def test_first_loss_from_hf_gpt2_equals_transformers(layout, hf_gpt2, tiny_corpus, tmp_path):
    hf_dir, model = hf_gpt2
    run_dir = tmp_path / "run"
    run_training(run_dir, tiny_corpus, *ONE_STEP, f"train.init_from={hf_dir}", *layout, nproc=2 if layout else 1)
    expected = mean_loss(lambda x: model(x).logits, first_batch(tiny_corpus))
    assert train_losses(run_dir)[1] == pytest.approx(expected, rel=0, abs=1e-5)
    saved = (run_dir / "config.yaml").read_text()
    assert "bias: true" in saved and "max_positions: 16" in saved  # the model section came from the source


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    """A tiny LLaMA with grouped K/V heads, biases and norm gains away from their init, saved by `transformers`."""
    torch.manual_seed(5)
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=SEQ, rms_norm_eps=1e-5, tie_word_embeddings=False,
        attention_bias=True, mlp_bias=True, rope_parameters={"rope_type": "default", "rope_theta": 20000.0})
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.normal_(mean=0.0 if name.endswith(".bias") else 1.0, std=0.1)
    out = tmp_path_factory.mktemp("hf") / "llama"
    model.save_pretrained(out)
    return out, model


def test_first_loss_from_hf_llama_at_tp2_zero3_equals_transformers(hf_llama, tiny_corpus, tmp_path):
    hf_dir, model = hf_llama
    run_dir = tmp_path / "run"
    run_training(run_dir, tiny_corpus, *ONE_STEP, f"train.init_from={hf_dir}", "parallel.tp=2", "zero.stage=3",
                 nproc=2)
    expected = mean_loss(lambda x: model(x).logits, first_batch(tiny_corpus))
    assert train_losses(run_dir)[1] == pytest.approx(expected, rel=0, abs=1e-5)
    saved = (run_dir / "config.yaml").read_text()
    assert "n_kv_heads: 2" in saved and "mlp: swiglu" in saved and "bias: true" in saved


def test_first_loss_from_a_megarank_tag_is_the_tags_model(reference_run, tiny_corpus, tmp_path):
    tag = reference_run / "checkpoints" / "global_step4"
    run_dir = tmp_path / "run"
    run_training(run_dir, tiny_corpus, *ONE_STEP, f"train.init_from={tag}")
    source = load_gpt(tag).model
    expected = mean_loss(source, first_batch(tiny_corpus))
    assert train_losses(run_dir)[1] == pytest.approx(expected, rel=0, abs=1e-5)


def test_conflicting_model_key_is_one_line(hf_gpt2, tiny_corpus, tmp_path):
    hf_dir, _ = hf_gpt2
    proc = run_training(tmp_path / "run", tiny_corpus, *ONE_STEP, f"train.init_from={hf_dir}", "model.n_layers=3",
                        check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "n_layers" in line]
    assert errors and "model.n_layers=3 conflicts with train.init_from" in errors[0] and "n_layers=2" in errors[0]


def test_resume_wins_over_init_from(hf_gpt2, tiny_corpus, tmp_path):
    hf_dir, _ = hf_gpt2
    run_dir = tmp_path / "run"
    args = ("checkpoint.every=1", f"train.init_from={hf_dir}")
    run_training(run_dir, tiny_corpus, "train.max_steps=1", *args)
    straight = tmp_path / "straight"
    run_training(straight, tiny_corpus, "train.max_steps=2", *args)
    proc = run_training(run_dir, tiny_corpus, "train.max_steps=2", *args)
    assert "model section from" in proc.stderr + proc.stdout
    # warm-up spans both steps, so the first attempt's max_steps=1 changed no rate: the resumed run is the
    # straight one
    assert train_losses(run_dir) == pytest.approx(train_losses(straight), rel=0, abs=1e-6)
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == [1, 2]

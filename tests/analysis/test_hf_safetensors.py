"""The safetensors reader against direct computation from the torch modules that wrote the files: a tiny
LLaMA with grouped-query attention (4 query heads sharing 2 K/V heads) and a tiny BERT, built offline with
`transformers` and saved sharded (model.safetensors.index.json); per head, naive SVD of the products formed
from the modules' own weights. Also a single-file model without config.json, a file holding two attention
stacks, and bad input (truncated or missing shard, unknown names, head counts that do not fit)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers  # a declared test dependency (setup.py extras 'dev')
from safetensors.torch import save_file

from megarank.analysis.readers import open_source
from megarank.analysis.report import analyse
from megarank.errors import MegarankError
from tests.analysis.test_megarank_ckpt import run_cli_error
from tests.analysis.test_spectra import naive_head_products, naive_sv


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = tiny_llama()
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path, safe_serialization=True, max_shard_size="20KB")
    assert len(list(path.glob("*.safetensors"))) > 2 and (path / "model.safetensors.index.json").is_file()
    return model, path


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                     intermediate_size=64, max_position_embeddings=32)
    model = transformers.BertModel(config).eval()
    path = tmp_path_factory.mktemp("bert")
    model.save_pretrained(path, safe_serialization=True, max_shard_size="20KB")
    return model, path


def direct(projections, d_head: int, n_kv: int) -> dict[str, np.ndarray]:
    """product -> (n_layers, n_heads, d_head) from [(q, k, v, o) per layer] by naive SVD."""
    out = {"qk": [], "ov": []}
    for q, k, v, o in projections:
        heads = list(naive_head_products(q.detach(), k.detach(), v.detach(), o.detach(), d_head, n_kv=n_kv))
        out["qk"].append([naive_sv(qk, d_head).numpy() for _, qk, _ in heads])
        out["ov"].append([naive_sv(ov, d_head).numpy() for _, _, ov in heads])
    return {p: np.array(v) for p, v in out.items()}


def llama_projections(model):
    return [(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight)
            for a in (layer.self_attn for layer in model.model.layers)]


def table_of(path, **kw):
    with open_source(path, **kw) as source:
        return analyse(source, rtol=1e-2, atol=1e-3, progress=False)


def assert_same_spectra(table, expected):
    for product in ("qk", "ov"):
        np.testing.assert_allclose(table.sv[product], expected[product], rtol=1e-10, atol=1e-14)
        sv = expected[product]
        np.testing.assert_array_equal(table.metrics[product]["rank"], (sv > 1e-2 * sv[..., :1]).sum(-1))


def test_llama_with_grouped_query_attention_matches_direct_computation(llama):
    model, path = llama
    table = table_of(path)
    info = table.info
    assert (info.family, info.n_layers, info.n_heads, info.n_kv_heads, info.d_head) == ("llama", 3, 4, 2, 8)
    assert_same_spectra(table, direct(llama_projections(model), 8, n_kv=2))


def test_bert_matches_direct_computation(bert):
    model, path = bert
    table = table_of(path)
    assert (table.info.family, table.info.n_heads, table.info.d_head) == ("bert", 6, 8)
    projections = [(a.self.query.weight, a.self.key.weight, a.self.value.weight, a.output.dense.weight)
                   for a in (layer.attention for layer in model.encoder.layer)]
    assert_same_spectra(table, direct(projections, 8, n_kv=6))


def test_single_file_without_config_needs_and_takes_the_head_count(tmp_path, capsys):
    model = tiny_llama()
    model.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "config.json").unlink()
    assert [p.name for p in tmp_path.glob("*.safetensors")] == ["model.safetensors"]
    assert "pass --n-heads" in run_cli_error(capsys, tmp_path, "--out", tmp_path / "out")
    table = table_of(tmp_path, n_heads=4)
    assert table.info.n_kv_heads == 2  # read off k_proj's height
    assert_same_spectra(table, direct(llama_projections(model), 8, n_kv=2))


def test_a_file_with_two_attention_stacks_needs_a_prefix(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    weights = {f"{stack}.layers.0.self_attn.{r}_proj.weight": torch.randn(16, 16, generator=g)
               for stack in ("vision", "text") for r in "qkvo"}
    save_file(weights, str(tmp_path / "model.safetensors"))
    line = run_cli_error(capsys, tmp_path, "--n-heads", "2", "--out", tmp_path / "out")
    assert "several attention stacks (prefixes 'text.', 'vision.')" in line and "--prefix" in line
    table = table_of(tmp_path, n_heads=2, prefix="text.")
    text = [tuple(weights[f"text.layers.0.self_attn.{r}_proj.weight"] for r in "qkvo")]
    assert_same_spectra(table, direct(text, 8, n_kv=2))


def test_truncated_shard(llama, tmp_path, capsys):
    broken = copy_model(llama[1], tmp_path)
    shard = sorted(broken.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    line = run_cli_error(capsys, broken, "--out", tmp_path / "out")
    assert f"'{shard}' cannot be read as safetensors: truncated or corrupt" in line
    assert not (tmp_path / "out").exists()


def test_missing_shard(llama, tmp_path, capsys):
    broken = copy_model(llama[1], tmp_path)
    shard = sorted(broken.glob("*.safetensors"))[-1]
    shard.unlink()
    line = run_cli_error(capsys, broken, "--out", tmp_path / "out")
    assert f"'{shard}' is missing: model.safetensors.index.json lists it" in line


def test_unknown_tensor_names(tmp_path, capsys):
    g = torch.Generator().manual_seed(4)  # MPT's names, a layout megarank does not read
    save_file({"transformer.wte.weight": torch.randn(64, 16, generator=g),
               "transformer.blocks.0.attn.Wqkv.weight": torch.randn(48, 16, generator=g),
               "transformer.blocks.0.attn.out_proj.weight": torch.randn(16, 16, generator=g)},
              str(tmp_path / "model.safetensors"))
    line = run_cli_error(capsys, tmp_path, "--out", tmp_path / "out")
    assert line.startswith(f"error: '{tmp_path}': no attention weights recognised (found "
                           "'transformer.blocks.0.attn.Wqkv.weight', 'transformer.blocks.0.attn.out_proj.weight')")
    assert "megarank reads the layouts of LLaMA" in line and "GPT-2" in line and "Phi-3" in line


def test_mismatched_head_count(llama, tmp_path, capsys):
    broken = copy_model(llama[1], tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["num_key_value_heads"] = 3
    (broken / "config.json").write_text(json.dumps(config))
    line = run_cli_error(capsys, broken, "--out", tmp_path / "out")
    assert f"'{broken / 'config.json'}'" in line and "4 attention heads cannot share 3 K/V heads" in line
    config["num_key_value_heads"], config["num_attention_heads"], config["head_dim"] = 4, 4, 8
    (broken / "config.json").write_text(json.dumps(config))
    line = run_cli_error(capsys, broken, "--out", tmp_path / "out")
    assert "k_proj.weight has shape (16, 32), expected (32, 32)" in line  # 2 K/V heads in the file, 4 claimed
    assert "n_heads=4" not in line and ".safetensors'" in line
    with pytest.raises(MegarankError, match="num_attention_heads=4, --n-heads says 2"):
        open_source(llama[1], n_heads=2)


def test_master_weights_do_not_apply(llama):
    with pytest.raises(MegarankError, match="--weights fp32 .* does not apply"):
        open_source(llama[1], weights="fp32")


def copy_model(source, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target

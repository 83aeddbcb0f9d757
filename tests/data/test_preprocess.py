"""Preprocessing: jsonl, jsonl.zst (the Pile's layout), parquet and txt inputs made in the test, tokenized to
shards and decoded back against the documents that were written; the held-out val split against its stated
rule (held_out); bad inputs against errors that name them; the two CLIs against the library calls."""

import hashlib
import importlib.util
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import megarank.data.sources as sources_module
from megarank.data.preprocess import held_out, preprocess
from megarank.data.sources import source_parts
from megarank.data.shards import TokenShards
from megarank.data.tokenizer import Tokenizer, train_tokenizer
from megarank.data.tokenizer_sample import sample_documents
from megarank.errors import MegarankError

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def make_docs(n: int = 60) -> list[str]:
    return [
        f"def f_{i}(x):\n\treturn x * {i}  # héllo {'世界' * (i % 3)}\n" + "    pass\n" * (i % 4)
        for i in range(n)
    ]


DOCS = make_docs()


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow caches of load_dataset and .map inside the test's directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return train_tokenizer(make_docs(300), tmp_path_factory.mktemp("tok") / "tok", 300)


def read_docs(directory: Path, tokenizer: Tokenizer) -> list[str]:
    shards = TokenShards(directory)
    stream = shards.read(0, shards.n_tokens)
    ends = np.flatnonzero(stream == tokenizer.eos_id)
    return [tokenizer.decode(d) for d in np.split(stream, ends + 1)[:-1]]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d, "meta": {"i": i}}) + "\n" for i, d in enumerate(docs)))
    return path


def test_jsonl_round_trips_across_shards(model, tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    summary = preprocess(str(source), model, tmp_path / "out", shard_tokens=50)
    tokenizer = Tokenizer(model)
    n_tokens = sum(len(tokenizer.encode(d)) + 1 for d in DOCS)
    assert summary["train"]["n_docs"] == len(DOCS) and summary["train"]["n_tokens"] == n_tokens
    assert set(summary) == {"train"}
    assert read_docs(tmp_path / "out" / "train", tokenizer) == DOCS
    meta = TokenShards(tmp_path / "out" / "train").meta
    assert len(meta["shards"]) == -(-n_tokens // 50)
    assert (meta["source"], meta["tokenizer"]) == (str(source), str(model.resolve()))
    assert meta["tokenizer_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def test_jsonl_zst_in_the_pile_layout(model, tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl", DOCS).read_bytes()
    source = tmp_path / "00.jsonl.zst"
    source.write_bytes(zstandard.ZstdCompressor().compress(raw))
    preprocess(str(source), model, tmp_path / "out")
    assert read_docs(tmp_path / "out" / "train", Tokenizer(model)) == DOCS


def test_zst_without_zstandard_is_a_clear_error(model, tmp_path, monkeypatch):
    source = tmp_path / "00.jsonl.zst"
    source.write_bytes(b"")
    real_find_spec = importlib.util.find_spec

    def find_spec_without_zstandard(name, *args):
        return None if name == "zstandard" else real_find_spec(name, *args)

    monkeypatch.setattr(sources_module.importlib.util, "find_spec", find_spec_without_zstandard)
    with pytest.raises(MegarankError, match="needs the zstandard package; pip install zstandard"):
        source_parts(str(source))


def test_parquet_directory(model, tmp_path):
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"content": DOCS[:30]}), tmp_path / "pq" / "a.parquet")
    pq.write_table(pa.table({"content": DOCS[30:]}), tmp_path / "pq" / "b.parquet")
    summary = preprocess(str(tmp_path / "pq"), model, tmp_path / "out", text_key="content")
    assert summary["train"]["n_docs"] == len(DOCS)
    assert read_docs(tmp_path / "out" / "train", Tokenizer(model)) == DOCS


def test_each_txt_file_is_one_document(model, tmp_path):
    for i, doc in enumerate(DOCS[:5]):
        (tmp_path / f"{i}.txt").write_text(doc + "\n\nsecond paragraph\n")
    preprocess(str(tmp_path / "*.txt"), model, tmp_path / "out")
    assert read_docs(tmp_path / "out" / "train", Tokenizer(model)) == [d + "\n\nsecond paragraph\n" for d in DOCS[:5]]


def test_val_split_is_seeded_disjoint_and_complete(model, tmp_path):
    source = str(write_jsonl(tmp_path / "docs.jsonl", DOCS))
    tokenizer = Tokenizer(model)
    splits = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        summary = preprocess(source, model, tmp_path / run, val_fraction=0.1, seed=seed, show_progress=False)
        splits[run] = [read_docs(tmp_path / run / name, tokenizer) for name in ("train", "val")]
        rule = [d for i, d in enumerate(DOCS) if held_out(seed, 0, i, 0.1)]
        assert splits[run][1] == rule and summary["val"]["n_docs"] == len(rule) > 0
    train, val = splits["a"]
    assert splits["b"] == splits["a"] and splits["c"][1] != val
    assert sorted(train + val) == sorted(DOCS) and not set(train) & set(val)
    assert train == [d for d in DOCS if d not in val]  # document order is kept


def test_two_processes_give_the_same_shards(model, tmp_path):
    (tmp_path / "src").mkdir()
    for k in range(3):
        write_jsonl(tmp_path / "src" / f"{k:02d}.jsonl", DOCS[k * 20 : (k + 1) * 20])
    preprocess(str(tmp_path / "src"), model, tmp_path / "one", num_proc=1, shard_tokens=100, show_progress=False)
    preprocess(str(tmp_path / "src"), model, tmp_path / "two", num_proc=2, shard_tokens=100, show_progress=False)
    one, two = tmp_path / "one" / "train", tmp_path / "two" / "train"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for path in one.iterdir():
        assert path.read_bytes() == (two / path.name).read_bytes(), path.name
    assert read_docs(one, Tokenizer(model)) == DOCS


def test_missing_path_names_it(model, tmp_path):
    with pytest.raises(MegarankError, match="nothere.jsonl not found"):
        preprocess(str(tmp_path / "nothere.jsonl"), model, tmp_path / "out")
    with pytest.raises(MegarankError, match="no files match"):
        source_parts(str(tmp_path / "*.parquet"))


def test_missing_text_column_lists_the_columns(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    with pytest.raises(MegarankError, match=r"has no column 'body' \(columns: \['text', 'meta'\]\)"):
        source_parts(str(source), text_key="body")


def test_unknown_format_and_existing_output_are_refused(model, tmp_path):
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(MegarankError, match="unknown format of .*data.csv"):
        source_parts(str(tmp_path / "data.*"))
    (tmp_path / "out" / "train").mkdir(parents=True)
    (tmp_path / "out" / "train" / "index.json").write_text("{}")
    with pytest.raises(MegarankError, match="already exists and is not empty"):
        preprocess("does-not-matter.jsonl", model, tmp_path / "out")


def test_malformed_json_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(MegarankError, match="could not load .*bad.jsonl: .*; check the file's format") as err:
        source_parts(str(tmp_path / "bad.jsonl"))
    assert "\n" not in str(err.value)


def test_too_few_documents_for_the_val_split(model, tmp_path):
    source = write_jsonl(tmp_path / "one.jsonl", DOCS[:1])
    with pytest.raises(MegarankError, match="no document fell in val; raise --val-fraction or give a val source"):
        preprocess(str(source), model, tmp_path / "out", val_fraction=0.01, show_progress=False)
    assert not (tmp_path / "out" / "train").exists() and not (tmp_path / "out" / "val").exists()


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_train_tokenizer_then_preprocess(tmp_path, capsys):
    docs = make_docs(300)
    source = str(write_jsonl(tmp_path / "docs.jsonl", docs))
    prefix = tmp_path / "cli_tok"
    argv = ["--input", source, "--vocab-size", "300", "--model-prefix", str(prefix), "--no-progress"]
    assert load_tool("train_tokenizer").main(argv) == 0
    model = Path(f"{prefix}.model")
    assert capsys.readouterr().out.strip() == str(model)
    sample = sample_documents([source], max_chars=20_000_000, show_progress=False)  # all 300, in key order
    assert sorted(sample) == sorted(docs)
    assert model.read_bytes() == train_tokenizer(sample, tmp_path / "library_tok", 300).read_bytes()

    argv = [source, "--tokenizer", str(model), "--out", str(tmp_path / "out"), "--val-fraction", "0.1", "--no-progress"]
    assert load_tool("preprocess").main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    held = sum(held_out(0, 0, i, 0.1) for i in range(300))
    assert {name: split["n_docs"] for name, split in summary.items()} == {"train": 300 - held, "val": held}
    tokenizer = Tokenizer(model)
    decoded = read_docs(tmp_path / "out" / "train", tokenizer) + read_docs(tmp_path / "out" / "val", tokenizer)
    assert sorted(decoded) == sorted(docs)


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    missing = str(tmp_path / "missing.jsonl")
    assert load_tool("preprocess").main([missing, "--tokenizer", "x.model", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tokenizer model x.model not found") and err.count("\n") == 1
    argv = ["--input", missing, "--vocab-size", "300", "--model-prefix", str(tmp_path / "t")]
    assert load_tool("train_tokenizer").main(argv) == 2
    assert capsys.readouterr().err == f"error: {missing} not found; check the path (or give a hub data set name)\n"

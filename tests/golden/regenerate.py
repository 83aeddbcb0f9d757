"""Rewrite the golden files after a deliberate change of results (a model, data or dependency change you
mean): `.venv/bin/python -m tests.golden.regenerate`. Review the diff of tests/golden/*.json before committing
it; a change you did not mean is what the golden test is there to catch."""

from __future__ import annotations

import tempfile
from pathlib import Path

from megarank.data.stdlib_corpus import ensure_stdlib_dataset, stdlib_source_files
from tests.golden.runs import RUNS, golden_record, write_golden


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # the same corpus as the tiny_corpus fixture in tests/conftest.py
        built = ensure_stdlib_dataset(Path(tmp) / "cache", 512, files=stdlib_source_files()[::15][:40],
                                      show_progress=False)
        corpus = built.train_dir.parent
        for name in RUNS:
            record = golden_record(name, Path(tmp) / name, corpus if name.startswith("gpt") else None)
            print(f"{name}: final {record['final']} -> {write_golden(record)}")


if __name__ == "__main__":
    main()

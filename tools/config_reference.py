"""Print (or write into README.md) the config reference table, from the schema's field docstrings.

usage: python tools/config_reference.py [--write README.md]
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
from pathlib import Path

from megarank.config.schema import ExperimentConfig

SCHEMA = Path(__file__).resolve().parents[1] / "megarank" / "config" / "schema.py"
TABLE = re.compile(r"\| key \| default \| meaning \|\n\|---\|---\|---\|\n(\|.*\|\n)+")


def field_docs() -> dict[tuple[str, str], str]:
    """(class, field) -> the docstring written under the field in schema.py."""
    docs = {}
    for cls in (n for n in ast.parse(SCHEMA.read_text()).body if isinstance(n, ast.ClassDef)):
        for node, after in zip(cls.body, cls.body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                docs[(cls.name, node.target.id)] = " ".join(str(after.value.value).split())
    return docs


def rows(cls=ExperimentConfig, prefix: str = "", docs=None):
    docs = docs if docs is not None else field_docs()
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from rows(type(default), f"{prefix}{f.name}.", docs)
        else:
            yield f"{prefix}{f.name}", default, docs.get((cls.__name__, f.name), "")


def table() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | `{default}` | {doc} |" for key, default, doc in rows()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="README", help="replace the table in this markdown file")
    args = parser.parse_args(argv)
    if not args.write:
        print(table(), end="")
        return 0
    path = Path(args.write)
    text = path.read_text()
    if not TABLE.search(text):
        print(f"error: no config table found in {path}", file=sys.stderr)
        return 2
    path.write_text(TABLE.sub(lambda _: table(), text))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The order `make test` hands test files to its two pytest-xdist workers: heaviest first, by the seconds each
file took in recorded runs (tests/file_weights.json: a shared run is charged to the file that trains it first),
so that the long files start early and the two workers finish together. The weights only order the files: a
stale one costs balance, never a result. pytest-xdist's `--dist loadfile --no-loadscope-reorder` gives each worker whole files in
collection order (without `--no-loadscope-reorder` it would sort them by their number of tests), and
tests/conftest.py's pytest_collection_modifyitems sorts the collection by `weight`. A file missing from the
record (a new one) weighs 0 and runs last.

After the suite changes much, record again from a run's JUnit XML:

    .venv/bin/python -m pytest tests -q -n 2 --dist loadfile --no-loadscope-reorder --junitxml=/tmp/suite.xml
    .venv/bin/python -m tests.file_order /tmp/suite.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from functools import cache
from pathlib import Path

WEIGHTS = Path(__file__).with_name("file_weights.json")


@cache
def weights() -> dict[str, float]:
    """Seconds per test file (path relative to the repository, as pytest's node ids write it)."""
    return json.loads(WEIGHTS.read_text()) if WEIGHTS.exists() else {}


def weight(nodeid: str) -> float:
    return weights().get(nodeid.split("::", 1)[0], 0.0)


def from_junit(xml: Path) -> dict[str, float]:
    """Seconds per test file in a JUnit XML report (setup, call and teardown of each test)."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(xml).iter("testcase"):
        module = case.get("classname", "").split(".")
        while module and not module[-1].startswith("test_"):  # a test class: drop it
            module.pop()
        if module:
            seconds["/".join(module) + ".py"] += float(case.get("time", 0))
    return dict(seconds)


def main(argv: list[str]) -> int:
    recorded = from_junit(Path(argv[0]))
    ordered = dict(sorted(((k, round(v, 1)) for k, v in recorded.items()), key=lambda kv: (-kv[1], kv[0])))
    WEIGHTS.write_text(json.dumps(ordered, indent=1) + "\n")
    print(f"{WEIGHTS}: {len(ordered)} files, {sum(ordered.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The documentation against the project it describes.

What is compared against what:
- README.md's line count against its limit (a door to docs/, not the manual);
- every relative link and image in README.md and docs/*.md against the files on disk (and a link's #anchor
  against the target page's headings), every repository path a page names against the tree, and every docs/
  page against the README's links (each page reachable from the front door);
- the text of the project's own files (megarank/, configs/, tools/, tests/, docs/, README.md, Makefile)
  against a reference to the paper summary the project does not ship (the science is docs/paper.md);
- docs/paper.md's headings against the sections the code cites;
- docs/configuration.md against what tools/config_reference.py generates from schema.py now, and its keys
  against every key the loader accepts (megarank.config.load.valid_keys).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from megarank.config.load import valid_keys
from megarank.config.schema import ExperimentConfig
from tests.helpers import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 200
# Written in two pieces so that this file does not itself contain the name it looks for.
MISSING_FILE = "PAPER" + ".md"
SEARCHED = ("megarank", "configs", "tools", "tests", "docs", "README.md", "Makefile")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".txt", ".toml", ".cfg", ".json", ""}
# [text](target) and ![alt](target); a target ends at whitespace or ')' (a title after it is ignored)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)")
# a path into the repository's own trees, as prose names it: megarank/analysis/spectra.py, configs/model/
REPO_PATH = re.compile(r"(?<![\w./-])(?:megarank|configs|tools|tests|docs)/[\w.*<>/-]*")
PAPER_SECTIONS = ("## The claim", "## Per-head products and how megarank measures them", "## Weight-decay groups",
                  "## Experiments", "### factorized (Fig 1)", "### icl (Fig 2)", "### lm-sweep (Table 1, Fig 3)",
                  "### pretrained (Fig 4)", "### scalar (Fig 5)", "### vit-sweep")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def relative_links(page: Path) -> list[str]:
    """Link targets in a markdown page that point into the repository (not URLs, not in-page anchors)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    targets = (m.group(1) for m in LINK.finditer(text))
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t, flags=re.I)]


def test_readme_fits_its_limit():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (limit {README_MAX_LINES}): move detail to docs/"


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#+\s+(.*?)\s*$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file(page):
    broken = [t for t in relative_links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not broken, f"{page.relative_to(REPO)} links to files that do not exist: {broken}"
    targets = [t.split("#", 1) for t in relative_links(page) if "#" in t and t.split("#")[0].endswith(".md")]
    missing = [f"{path}#{anchor}" for path, anchor in targets if anchor not in anchors(page.parent / path)]
    assert not missing, f"{page.relative_to(REPO)} links to headings that do not exist: {missing}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_a_page_names_exists(page):
    """Paths in prose and code blocks too (`megarank/parallel/memory.py`), not only links: a moved module
    must take its mentions along. Globs count when they match something; <placeholders> are skipped."""
    named = {m.group(0).rstrip(".,;:") for m in REPO_PATH.finditer(page.read_text(encoding="utf-8"))}
    missing = sorted(p for p in named if "<" not in p and not list(REPO.glob(p)))
    assert not missing, f"{page.relative_to(REPO)} names paths the project lacks: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t.split("#")[0]).resolve() for t in relative_links(README)}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def searched_files() -> list[Path]:
    files = []
    for name in SEARCHED:
        path = REPO / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [f for f in candidates if f.is_file() and f.suffix in TEXT_SUFFIXES and "__pycache__" not in f.parts]
    return files


def test_no_reference_to_the_missing_paper_summary():
    hits = [f"{f.relative_to(REPO)}:{n}" for f in searched_files()
            for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if MISSING_FILE in line]
    assert not hits, f"{MISSING_FILE} is not part of the project; cite docs/paper.md instead: {hits}"


def test_paper_page_has_the_sections_the_code_cites():
    headings = {line.strip() for line in (DOCS / "paper.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("#")}
    missing = [s for s in PAPER_SECTIONS if s not in headings]
    assert not missing, f"docs/paper.md lacks the sections {missing}"


def _config_reference():
    spec = importlib.util.spec_from_file_location("tools_config_reference", REPO / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_configuration_page_is_what_the_generator_writes():
    reference = _config_reference()
    if (DOCS / "configuration.md").read_text(encoding="utf-8") != reference.generate():
        pytest.fail(f"docs/configuration.md is stale: run `{reference.COMMAND}`", pytrace=False)


def test_configuration_page_lists_every_key_the_loader_accepts():
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([\w.]+)` \|", page, flags=re.M)
    assert sorted(documented) == sorted(valid_keys(ExperimentConfig)), (
        "docs/configuration.md's keys differ from the schema's: run `python tools/config_reference.py`")

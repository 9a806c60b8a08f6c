"""The README stays short and true: the set-up commands first, the module map complete, every link resolving.
Its shell blocks run (or say what they need) in tests/test_docs.py, with the docs' own."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """Python-Markdown's toc anchor (what MkDocs and, for these headings, GitHub produce)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+?)\s*$", text, re.M)}


def test_readme_starts_with_the_demo_and_test_commands():
    first_block = README.read_text(encoding="utf-8").split("```")[1]
    assert "topa demo" in first_block and "pytest" in first_block
    ci = (ROOT / ".ci" / "run").read_text()
    assert [line for line in first_block.splitlines() if "pytest" in line][0] in ci


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_every_readme_link_resolves():
    text = README.read_text(encoding="utf-8")
    links = [target for target in LINK.findall(text) if not target.startswith(("http://", "https://", "mailto:"))]
    assert len(links) >= 12
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        page = (ROOT / path) if path else README
        if not page.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(page):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_the_anchor_rule_matches_mkdocs():
    assert slug("Captioning (the paper's MSR-VTT / VATEX numbers)") == "captioning-the-papers-msr-vtt-vatex-numbers"
    assert slug("`topa eval`: failed runs fail") == "topa-eval-failed-runs-fail"


def test_module_map_matches_the_package():
    """Every top-level module and subpackage of topa_plugin has a row in the README's module map, and no more."""
    package = ROOT / "topa_plugin"
    entries = {p.name + ("/" if p.is_dir() else "") for p in package.iterdir() if p.name != "__pycache__"}
    section = README.read_text(encoding="utf-8").split("## Where the code lives")[1].split("\n## ")[0]
    listed = set(re.findall(r"^\| `topa_plugin/([^`]+)`", section, re.MULTILINE))
    assert listed == entries

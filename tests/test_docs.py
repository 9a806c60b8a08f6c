"""The documentation site stays whole and true: every page in the nav and every nav entry a page, the CLI
and API references complete, and every shell block either run here on the toy models or marked with what
it needs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import topa_plugin
from tests.helpers.cli_reference import is_current

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# What a block that is not run here may need; `<!-- needs: real weights, GPU -->` before the block.
NEEDS = {"real weights", "GPU", "several GPUs", "network", "an API key", "a server", "a clone", "the package registry",
         "your data", "a long run"}
FENCE = re.compile(r"^```(bash|sh|shell|console)\n(.*?)^```$", re.S | re.M)
MARKER = re.compile(r"<!-- (needs|exits): ([^>]*) -->\s*$")
DEMO = "topa-demo"


class _Loader(yaml.SafeLoader):
    """mkdocs.yml names Python objects (`!!python/name:`); the nav needs none of them."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_pages() -> list[str]:
    def walk(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from walk(value) if isinstance(value, list) else [value]
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)
    return list(walk(config["nav"]))


def test_every_nav_entry_is_a_page_and_every_page_is_in_the_nav():
    listed = nav_pages()
    assert len(listed) == len(set(listed)), "a page is listed twice"
    missing = [page for page in listed if not (DOCS / page).is_file()]
    assert not missing, f"the nav names pages that do not exist: {missing}"
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    unlisted = sorted(set(pages) - set(listed))
    assert not unlisted, f"add these pages to the nav in mkdocs.yml: {unlisted}"


def test_cli_reference_matches_the_parser():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert is_current(text), "run: python -m tests.helpers.cli_reference"
    assert is_current(text.replace("extract CLIP features", "extract features")) is False


def test_api_page_documents_every_public_name():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = {line.split()[1].rsplit(".", 1)[1] for line in text.splitlines() if line.startswith("::: ")}
    missing = sorted(set(topa_plugin.__all__) - documented)
    assert not missing, f"add a `::: module.name` entry to docs/api.md for: {missing}"


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    text: str
    kind: str | None  # "needs", "exits" or None (runs, exit 0)
    value: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def shell_blocks(paths=None) -> list[Block]:
    blocks = []
    for path in paths or [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for found in FENCE.finditer(text):
            before = text[:found.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.search(before)
            name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
            blocks.append(Block(name, text.count("\n", 0, found.start()) + 1, found.group(2),
                                marker.group(1) if marker else None, marker.group(2).strip() if marker else ""))
    return blocks


BLOCKS = shell_blocks()
RUN = [b for b in BLOCKS if b.kind != "needs"]


def test_blocks_that_are_not_run_say_what_they_need():
    bad = [f"{b.id}: {b.value!r}" for b in BLOCKS if b.kind == "needs"
           and not set(map(str.strip, b.value.split(","))) <= NEEDS]
    assert not bad, f"`<!-- needs: ... -->` takes some of {sorted(NEEDS)}: {bad}"
    assert all(b.value.isdigit() for b in BLOCKS if b.kind == "exits")


def test_the_docs_run_commands_and_mark_the_rest():
    assert len(RUN) >= 8 and len(BLOCKS) - len(RUN) >= 8
    assert any(b.text.lstrip().startswith("topa demo") for b in RUN), "the demo block makes the toy models"


def test_the_marker_finder_sees_markers_and_their_absence(tmp_path):
    page = (tmp_path / "page").with_suffix(".md")
    page.write_text("<!-- needs: GPU -->\n```bash\nnvidia-smi\n```\n\ntext\n\n```bash\ntopa --help\n```\n"
                    "<!-- exits: 2 -->\n```sh\ntopa nope\n```\n")
    found = [(b.kind, b.value, b.text) for b in shell_blocks([page])]
    assert found == [("needs", "GPU", "nvidia-smi\n"), (None, "", "topa --help\n"), ("exits", "2", "topa nope\n")]


def _bin_dirs(cwd: Path) -> str:
    """This interpreter's scripts first. A virtualenv that takes torch from the system site-packages has no
    `torchrun` of its own (the system's would run another Python): give it one that runs this interpreter's."""
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "torchrun").exists():
        return str(bin_dir)
    shim = cwd / ".bin"
    shim.mkdir(exist_ok=True)
    (shim / "torchrun").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
    (shim / "torchrun").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{shim}"


def _run(block: Block, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": _bin_dirs(cwd) + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(cwd / "hf_home"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def _check(block: Block, done: subprocess.CompletedProcess) -> None:
    expected = int(block.value) if block.kind == "exits" else 0
    assert done.returncode == expected, f"{block.id}\n{block.text}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if expected == 2:
        assert re.search(r"^topa [\w -]+: error: ", done.stderr, re.M), done.stderr[-2000:]


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A folder where the docs' demo block ran: the toy models the other blocks use."""
    cwd = tmp_path_factory.mktemp("docs-run")
    block = next(b for b in RUN if b.text.lstrip().startswith("topa demo"))
    done = _run(block, cwd)
    return cwd, block, done


@pytest.mark.parametrize("block", [b for b in RUN if DEMO not in b.text], ids=lambda b: b.id)
def test_offline_block_runs(block, tmp_path):
    _check(block, _run(block, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in RUN if DEMO in b.text], ids=lambda b: b.id)
def test_block_runs_on_the_demo_models(block, demo_dir):
    cwd, demo_block, done = demo_dir
    _check(demo_block, done)
    if block != demo_block:
        _check(block, _run(block, cwd))


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    """No broken link, anchor or API reference (CI runs the same command)."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "api.html").read_text(encoding="utf-8").count("score_choices") >= 2

"""The README stays true: its CLI reference matches the parser, its offline commands run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli_reference import updated_readme

README = Path(__file__).resolve().parents[1] / "README.md"
OFFLINE_BLOCK = re.compile(r"<!-- offline -->\n```(?:bash|sh)\n(.*?)```", re.S)


def offline_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    lines = [line for block in OFFLINE_BLOCK.findall(text) for line in block.splitlines()]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_cli_reference_matches_the_parser():
    text = README.read_text(encoding="utf-8")
    assert updated_readme(text) == text, "run: python -m tests.helpers.cli_reference README.md"


def test_readme_starts_with_the_demo_and_test_commands():
    first_block = README.read_text(encoding="utf-8").split("```")[1]
    assert "topa demo" in first_block and "pytest" in first_block
    ci = (README.parent / ".ci" / "run").read_text()
    assert [line for line in first_block.splitlines() if "pytest" in line][0] in ci


def test_readme_has_offline_commands():
    assert len(offline_commands()) >= 2


@pytest.mark.parametrize("command", offline_commands())
def test_offline_readme_command_runs(command, tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def test_module_map_matches_the_package():
    """Every top-level module and subpackage of topa_plugin has a row in the README's module map, and no more."""
    package = README.parent / "topa_plugin"
    entries = {p.name + ("/" if p.is_dir() else "") for p in package.iterdir() if p.name != "__pycache__"}
    section = README.read_text(encoding="utf-8").split("## Where the code lives")[1].split("\n## ")[0]
    listed = set(re.findall(r"^\| `topa_plugin/([^`]+)`", section, re.MULTILINE))
    assert listed == entries

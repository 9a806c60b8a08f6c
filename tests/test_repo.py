"""The repository is self-contained: every repository path its code and docs cite exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a cited path, not a glob (configs/zero*.json) and not a placeholder (configs/<recipe>.sh)
CITED = re.compile(r"\b((?:topa_plugin|tests|docs|configs|benchmarks|examples|integration_tests|\.ci)/[\w./-]*\w)(?![\w*])")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".sh", ".yaml", ".toml", ".txt", ".json")) or n == ".ci/run"]


def test_every_cited_repository_path_exists():
    missing = []
    for path in tracked_text_files():
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for cited in CITED.findall(line):
                if not (ROOT / cited).exists() and not (ROOT / cited.rstrip(".")).exists():
                    missing.append(f"{path.relative_to(ROOT)}:{line_no}: {cited}")
    assert not missing, "\n".join(missing)

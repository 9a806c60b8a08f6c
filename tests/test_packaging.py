"""What a packager expects: one version, true Python and dependency ranges, data files in the wheel."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import topa_plugin

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_one_version_in_the_package_the_changelog_and_the_metadata():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "topa_plugin.version.__version__"}
    released = re.findall(r"^## \[(\d[^\]]*)\]", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert released and released[0] == topa_plugin.__version__
    assert importlib.metadata.version("topa-plugin") == topa_plugin.__version__


def test_requires_python_is_what_transformers_requires():
    """We claim no Python that our transformers range cannot install on (5.21+ needs 3.11)."""
    ours = SpecifierSet(PYPROJECT["project"]["requires-python"])
    theirs = SpecifierSet(importlib.metadata.metadata("transformers")["Requires-Python"])
    assert "3.10.13" not in ours
    for minor in range(8, 20):
        version = f"3.{minor}.0"
        if version in ours:
            assert version in theirs, f"requires-python claims {version}, which transformers does not install on"
    assert f"{sys.version_info.major}.{sys.version_info.minor}.0" in ours


def _requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in listed]


def test_pyproject_has_ranges_and_constraints_the_exact_pins():
    exact = [str(r) for r in _requirements() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not exact, f"exact pins belong in constraints.txt: {exact}"
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    for requirement in _requirements():
        pinned = pins.get(requirement.name.lower().replace("_", "-"))
        if pinned is not None:
            assert requirement.specifier.contains(pinned, prereleases=True), f"{requirement} excludes the tested {pinned}"
    assert {"lmms-eval", "transformers", "torch", "mkdocs", "mkdocs-material"} <= set(pins)


@pytest.mark.slow
def test_the_wheel_ships_the_deepspeed_configs_and_recipes(tmp_path):
    """After a pip install without a clone, `--deepspeed zero2` resolves inside the installed package."""
    source = tmp_path / "src"  # setuptools builds in the source tree: build a copy, leave the checkout clean
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "site", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("topa_plugin-*.whl"))
    assert wheel.name.startswith(f"topa_plugin-{topa_plugin.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("zero2.json", "zero3.json"):
        assert f"topa_plugin/training/configs/deepspeed/{name}" in names
    assert "topa_plugin/training/configs/llama2/pretrain_llama2_7b.yaml" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import topa_plugin; from topa_plugin.training.arguments import resolve_deepspeed; "
             "print(topa_plugin.__file__); print(resolve_deepspeed('zero2'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    package_file, resolved = done.stdout.split()
    assert package_file.startswith(str(target)) and resolved.startswith(str(target)) and Path(resolved).is_file()

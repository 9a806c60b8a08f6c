"""Fixtures shared by the lmms-eval model tests."""

import pytest

from tests.helpers.lmms_fixtures import build_topa_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, toy_llama_dir):
    """A tiny TOPA plugin directory (toy Llama, random trainables with non-zero gates, a memory bank)."""
    return build_topa_checkpoint(tmp_path_factory.mktemp("lmms_ckpt"), toy_llama_dir)

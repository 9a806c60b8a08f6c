"""Session-wide toy models, built once with ``topa_plugin.demo.toy`` and loaded back from disk by the tests."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores are shared by everything on the test machine; intra-op threads only add contention.
torch.set_num_threads(int(os.environ.get("TOPA_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def toy_tokenizer_dir(tmp_path_factory):
    from topa_plugin.demo import toy

    out = tmp_path_factory.mktemp("toy_tokenizer")
    toy.train_toy_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def toy_llama_dir(tmp_path_factory, toy_tokenizer_dir):
    from topa_plugin.demo import toy

    return toy.build_toy_llama(tmp_path_factory.mktemp("toy_llama"), toy_tokenizer_dir)


@pytest.fixture(scope="session")
def toy_llama_gqa_dir(tmp_path_factory, toy_tokenizer_dir):
    """Llama-3-shaped attention: 4 query heads share 2 key/value heads."""
    from topa_plugin.demo import toy

    return toy.build_toy_llama(tmp_path_factory.mktemp("toy_llama_gqa"), toy_tokenizer_dir, heads=4, kv_heads=2, seed=1)


@pytest.fixture(scope="session")
def toy_clip(tmp_path_factory):
    """(open_clip model-config JSON, weights file) of a tiny random CLIP with 768-d embeddings."""
    from topa_plugin.demo import toy

    return toy.build_toy_clip(tmp_path_factory.mktemp("toy_clip"))

"""Fixtures shared by the training tests: a processor over the toy tokenizer and the bundled TextVid sample."""

from __future__ import annotations

import pytest

from topa_plugin.processing import TopaProcessor
from topa_plugin.textvid import read_textvid, sample_path


@pytest.fixture(scope="module")
def processor(toy_tokenizer_dir):
    from transformers import AutoTokenizer

    return TopaProcessor(AutoTokenizer.from_pretrained(toy_tokenizer_dir), max_feats=10)


@pytest.fixture(scope="module")
def records():
    return read_textvid(sample_path())

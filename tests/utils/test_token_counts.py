"""Segment token counts equal the tokenizer's counts, and are refused where they would not."""

from __future__ import annotations

import json
import pickle

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tests.helpers.toy_tokenizers import byte_level_bpe_tokenizer
from topa_plugin.processing import TopaProcessor
from topa_plugin.utils.token_counts import SegmentCounter, _python_normalizer

TEXTS = [
    "Question: What did the person do?\nChoices: \n(A) cut the onion\n(B) left\nAnswer: The correct choice is",
    "  leading and trailing spaces  ", "double  spaces   and\ttabs", "newlines\n\nand\n digits 12345 3.14",
    "é 你好 emoji 🙂 and byte fallback ☃", "a literal ▁ and ▁▁ in the text", "", " ", "x" * 300,
    "</s> special <s> text inside <unk>", "word</s>glued",
]


@pytest.fixture(scope="module")
def llama2_tokenizer(toy_tokenizer_dir):
    return AutoTokenizer.from_pretrained(toy_tokenizer_dir)


def _tokenizer_counts(tokenizer, texts):
    return [len(tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True)) for t in texts]


def test_llama2_style_counts_equal_the_tokenizer(llama2_tokenizer):
    counter = SegmentCounter.for_tokenizer(llama2_tokenizer)
    assert counter is not None
    counts = counter(TEXTS * 2)  # the second pass reads the cache
    expected = _tokenizer_counts(llama2_tokenizer, TEXTS)
    assert [n for n, t in zip(counts, TEXTS) if "<" not in t] == [n for n, t in zip(expected, TEXTS) if "<" not in t]
    assert counts[len(TEXTS):] == counts[:len(TEXTS)]
    assert [t for n, t in zip(counts, TEXTS) if n is None] == [t for t in TEXTS if "<" in t and ">" in t]


def test_processor_counts_with_segments_and_falls_back_for_added_tokens(llama2_tokenizer):
    processor = TopaProcessor(llama2_tokenizer)
    assert processor._segment_counter is not None
    assert processor.count_tokens(TEXTS) == _tokenizer_counts(llama2_tokenizer, TEXTS)
    clone = pickle.loads(pickle.dumps(processor))  # DataLoader workers get a copy without the cache
    assert clone.count_tokens(TEXTS) == processor.count_tokens(TEXTS)


def test_python_normalizer_equals_the_tokenizers_normalizer(llama2_tokenizer):
    backend = llama2_tokenizer.backend_tokenizer
    normalize = _python_normalizer(json.loads(backend.to_str())["normalizer"])
    assert [normalize(t) for t in TEXTS] == [backend.normalizer.normalize_str(t) for t in TEXTS]
    assert _python_normalizer({"type": "NFKC"}) is None


def _with_merge_across_words(tokenizer) -> PreTrainedTokenizerFast:
    """The tokenizer plus a first-priority merge of "e" with a following "▁": words no longer tokenize apart."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    vocab["e▁"] = max(vocab.values()) + 1
    spec["model"]["merges"].insert(0, ["e", "▁"])
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_a_merge_across_words_is_refused(llama2_tokenizer):
    crossing = _with_merge_across_words(llama2_tokenizer)
    texts = ["the onion", "take the pan", "one more time please"]
    spec = json.loads(crossing.backend_tokenizer.to_str())
    unproven = SegmentCounter(crossing.backend_tokenizer, _python_normalizer(spec["normalizer"]), None)
    assert unproven(texts) != _tokenizer_counts(crossing, texts)  # what the proof guards against
    assert SegmentCounter.for_tokenizer(crossing) is None
    assert TopaProcessor(crossing).count_tokens(texts) == _tokenizer_counts(crossing, texts)


def test_tokenizers_with_a_pre_tokenizer_count_with_the_tokenizer(tmp_path):
    tokenizer = byte_level_bpe_tokenizer(tmp_path, "<|begin_of_text|>", "<|end_of_text|>")
    assert SegmentCounter.for_tokenizer(tokenizer) is None
    texts = [t for t in TEXTS if t]
    assert TopaProcessor(tokenizer).count_tokens(texts) == _tokenizer_counts(tokenizer, texts)

"""Exact token counts of many texts, fast on sentencepiece-style BPE tokenizers (Llama-2, Mistral).

Training start-up counts the tokens before the answer of every prompt a Tideo can produce: about
four texts per Tideo, 2.9M at the release's 721k. A Llama-2 tokenizer has no pre-tokenizer, so the
Rust tokenizer runs BPE over each whole text as one word: no word cache, about 40 µs a text, plus
as much again for its alignment-tracking normalizer. But sentencepiece splits on whitespace before
it merges, so no merge joins a character to a following "▁": a text's tokens are then exactly the
tokens of its whitespace-led segments (``▁*[^▁]+``), each counted once and cached.

``SegmentCounter.for_tokenizer`` proves that from the tokenizer's own definition (BPE without
dropout, no pre-tokenizer, no merge across a "▁" boundary) and returns None otherwise: callers
then count with the tokenizer itself. A text holding an added token's text is counted by the
tokenizer too (the tokenizer may match it as one token).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

SPACE = "▁"
SEGMENT = re.compile(f"{SPACE}*[^{SPACE}]+|{SPACE}+")
# Distinct segments remembered (words with their punctuation: far fewer than this in English text).
CACHE_LIMIT = 1 << 20


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    """Merges as (left, right): tokenizers writes them as "a b" strings or [a, b] pairs."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def _python_normalizer(spec: dict | None) -> Callable[[str], str] | None:
    """The normalizer in plain Python when it is only Prepend / literal Replace steps (Llama-2's), else None."""
    steps = [] if spec is None else spec["normalizers"] if spec["type"] == "Sequence" else [spec]
    ops = []
    for step in steps:
        if step["type"] == "Prepend":
            ops.append(lambda s, p=step["prepend"]: p + s if s else s)
        elif step["type"] == "Replace" and set(step["pattern"]) == {"String"}:
            ops.append(lambda s, a=step["pattern"]["String"], b=step["content"]: s.replace(a, b))
        else:
            return None

    def normalize(text: str) -> str:
        for op in ops:
            text = op(text)
        return text

    return normalize


class SegmentCounter:
    """``len(tokenizer.encode(text, add_special_tokens=False))`` summed over cached segments."""

    def __init__(self, backend, normalize: Callable[[str], str], added: re.Pattern | None):
        self._tokenize = backend.model.tokenize
        self._normalize = normalize
        self._added = added
        self._cache: dict[str, int] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer) -> SegmentCounter | None:
        """A counter for this Hugging Face tokenizer, or None when segment counts are not provably exact."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        spec = json.loads(backend.to_str())
        model = spec["model"]
        if (model["type"] != "BPE" or model.get("dropout") or model.get("ignore_merges")
                or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
                or spec.get("pre_tokenizer") is not None or SPACE not in model["vocab"]):
            return None
        if any(left[-1] != SPACE and right[0] == SPACE for left, right in _merge_pairs(model["merges"])):
            return None  # some merge joins a word to the next one: segments are not independent
        normalize = _python_normalizer(spec.get("normalizer")) or backend.normalizer.normalize_str
        contents = [t["content"] for t in spec.get("added_tokens", [])]
        added = re.compile("|".join(map(re.escape, contents))) if contents else None
        return cls(backend, normalize, added)

    def __call__(self, texts: Sequence[str]) -> list[int | None]:
        """Each text's count; None for a text holding an added token's text (count it with the tokenizer)."""
        cache, tokenize, added = self._cache, self._tokenize, self._added
        counts: list[int | None] = []
        for text in texts:
            normalized = self._normalize(text)
            if added is not None and (added.search(text) or added.search(normalized)):
                counts.append(None)
                continue
            total = 0
            for segment in SEGMENT.findall(normalized):
                n = cache.get(segment)
                if n is None:
                    if len(cache) >= CACHE_LIMIT:
                        cache.clear()
                    n = cache[segment] = len(tokenize(segment))
                total += n
            counts.append(total)
        return counts

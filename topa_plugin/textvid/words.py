"""Words of TextVid text, as every quality figure counts them: lower-cased runs of letters, digits and
apostrophes (so "Pours," and "pours" are one word), with a short list of function words left out where
a figure compares content ("the", "a", "of" would otherwise decide which option overlaps the question)."""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

_STOP_WORDS_TEXT = """
a an the and or but nor of to in on at by for with from into onto over under up down out off about as than then
so if is are was were be been being am do does did doing has have had having it its it's this that these those
there here which who whom whose what when where why how all any both each few more most other some such no not
only own same too very can will just should would could may might must shall i me my we our you your he him his
she her they them their one ones
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, in order."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    """The distinct words of ``text`` that are not function words."""
    return {w for w in words(text) if w not in STOP_WORDS}

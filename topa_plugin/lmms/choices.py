"""Where multiple-choice options come from: a doc's option list, or lettered lines in a prompt.

The lettered-prefix rule lives here once; the task yamls (``doc_to_choice``) and the model's
option ranking both use it, so the two EgoSchema variants rank identical option texts.
"""

from __future__ import annotations

import re

# "A. text", "A) text", "(A) text", "A: text"; capital letters only, so "a person ..." is no prefix.
_PREFIX = re.compile(r"^\s*\(?([A-Z])\s*[.):]\s*(.*)$", re.DOTALL)
_DOC_OPTION_FIELDS = ("option", "options")


def split_option(option: str) -> tuple[str | None, str]:
    """``"A. cut the onion"`` -> ``("A", "cut the onion")``; unlettered text -> ``(None, text)``."""
    match = _PREFIX.match(option)
    if match is None:
        return None, option.strip()
    return match.group(1), match.group(2).strip()


def letters_and_texts(options: list[str]) -> tuple[list[str], list[str]]:
    """Letters (from the prefixes, else A, B, ...) and bare texts of an option list."""
    split = [split_option(o) for o in options]
    if all(letter is not None for letter, _ in split):
        letters = [letter for letter, _ in split]
    else:
        letters = [chr(ord("A") + i) for i in range(len(options))]
    return letters, [text for _, text in split]


def doc_options(doc: dict) -> list[str] | None:
    """The doc's option list (EgoSchema ``option``), or None when it carries none."""
    for field in _DOC_OPTION_FIELDS:
        value = doc.get(field)
        if isinstance(value, (list, tuple)) and len(value) >= 2 and all(isinstance(v, str) for v in value):
            return list(value)
    return None


def options_from_prompt(text: str) -> tuple[str, list[str]] | None:
    """Split a prompt into (question, lettered options) when it lists options A, B, C, ... on
    their own lines; None otherwise. Lines after the last option (answer instructions) are dropped."""
    lines = text.splitlines()
    first = None
    options: list[str] = []
    for i, line in enumerate(lines):
        letter, _ = split_option(line)
        expected = chr(ord("A") + len(options))
        if letter == expected and (first is None or i == first + len(options)):
            first = i if first is None else first
            options.append(line)
        elif first is not None:
            break
    if len(options) < 2:
        return None
    question = "\n".join(lines[:first]).strip()
    return question, options

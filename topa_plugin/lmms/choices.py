"""Which options a prompt shows, how its question reads without scaffolding, and how to answer.

The prompt is the truth: options are the labelled lines the prompt shows (``A. x``, ``(A) x``,
``A) x``, ``A: x``, ``1. x``, ``(1) x``, ``Caption A: x``, ``Sentence 1: x``, ``Option 1: x``),
consecutive and labelled in sequence from the first label. A doc's option list never adds
options; it only chooses between several such blocks. The reply uses the prompt's label style,
so each task's own answer parser reads it. No block shown: the caller generates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

# (pattern, label style). Group "label" is the label, "text" the option text.
_LETTER = r"[A-Z]"
_NUMBER = r"[1-9][0-9]?"
_LINE_STYLES = (
    (re.compile(rf"^\((?P<label>{_LETTER})\)\s*(?P<text>.*)$"), "({label})"),
    (re.compile(rf"^(?P<label>{_LETTER})[.):]\s+(?P<text>.*)$"), "{label}"),
    (re.compile(rf"^\((?P<label>{_NUMBER})\)\s*(?P<text>.*)$"), "({label})"),
    (re.compile(rf"^(?P<label>{_NUMBER})[.):]\s+(?P<text>.*)$"), "{label}"),
    (re.compile(rf"^(?P<word>Caption|Sentence|Option) (?P<label>{_LETTER}|{_NUMBER}):\s*(?P<text>.*)$"), "{word} {label}"),
)
# Lines that tell a model how to format its answer (lmms-eval task prompts), not part of the question.
_INSTRUCTION_LINES = re.compile(
    r"^(select the best answer to the following multiple-choice question.*"
    r"|answer with the option'?s (letter|number) from the given choices directly\.?"
    r"|only give the best option\.?"
    r"|please directly give the best option:?"
    r"|the best answer is:?"
    r"|best option:\s*\(?"
    r"|respond with only the letter.*)$",
    re.IGNORECASE,
)
_HEADER_LINES = re.compile(r"^(options?|choices?)\s*:\s*$", re.IGNORECASE)
_QUESTION_LABEL = re.compile(r"^question\s*:\s*", re.IGNORECASE)
_DOC_OPTION_FIELDS = ("option", "options", "candidates")


class AmbiguousOptionsError(ValueError):
    """The prompt shows several option blocks and the doc does not say which one is asked."""


@dataclass(frozen=True)
class OptionList:
    """The question and options a prompt shows; ``reply(i)`` answers option i in the prompt's style."""

    question: str
    labels: tuple[str, ...]
    texts: tuple[str, ...]
    style: str
    word: str = ""

    def reply(self, index: int) -> str:
        return self.style.format(label=self.labels[index], word=self.word)


@dataclass(frozen=True)
class _Block:
    start: int
    end: int  # exclusive line index
    options: OptionList


def _match_line(line: str):
    for pattern, style in _LINE_STYLES:
        match = pattern.match(line.strip())
        if match:
            return match, style
    return None, None


def _next_label(label: str) -> str:
    return str(int(label) + 1) if label.isdigit() else chr(ord(label) + 1)


def _blocks(lines: list[str]) -> list[_Block]:
    """Every run of >= 2 consecutive option lines labelled A, B, ... (or 1, 2, ...) in one style."""
    found, i = [], 0
    while i < len(lines):
        match, style = _match_line(lines[i])
        if match is None or match["label"] not in ("A", "1"):
            i += 1
            continue
        word = match.groupdict().get("word") or ""
        labels, texts, j = [match["label"]], [match["text"].strip()], i + 1
        while j < len(lines):
            nxt, nxt_style = _match_line(lines[j])
            same_kind = nxt is not None and nxt_style == style and (nxt.groupdict().get("word") or "") == word
            if not same_kind or nxt["label"] != _next_label(labels[-1]):
                break
            labels.append(nxt["label"])
            texts.append(nxt["text"].strip())
            j += 1
        if len(labels) >= 2:
            found.append(_Block(i, j, OptionList("", tuple(labels), tuple(texts), style, word)))
            i = j
        else:
            i += 1
    return found


def clean_question(lines: list[str]) -> str:
    """The question text without task scaffolding: a leading "Question:" label, "Options:" /
    "Choices:" headers and answer-format instruction lines."""
    kept = []
    for line in lines:
        text = line.strip()
        if _HEADER_LINES.match(text) or _INSTRUCTION_LINES.match(text):
            continue
        kept.append(_QUESTION_LABEL.sub("", line.rstrip()))
    return "\n".join(kept).strip()


def split_label(option: str) -> str:
    """An option's text without a label it may carry (``"A. x"`` -> ``"x"``); unlabelled text as is."""
    match, _ = _match_line(option)
    return match["text"].strip() if match is not None else option.strip()


def option_texts(options: list[str]) -> list[str]:
    """Option texts without labels when every option carries one ("A. x"); else the texts as given,
    so an unlabelled "U.S. flag" keeps its start."""
    if all(_match_line(o)[0] is not None for o in options):
        return [split_label(o) for o in options]
    return [o.strip() for o in options]


def doc_options(doc: dict) -> list[str] | None:
    """Texts of the doc's own option list (``option``, ``options`` or ``candidates``), or None."""
    for field in _DOC_OPTION_FIELDS:
        value = doc.get(field)
        if isinstance(value, (list, tuple)) and len(value) >= 2 and all(isinstance(v, str) for v in value):
            return option_texts(list(value))
    return None


def parse_options(prompt: str, doc: dict | None = None) -> OptionList | None:
    """The options the prompt shows and its cleaned question (the text before them); None when it
    shows none. Several blocks: the one whose texts equal the doc's options, else an error."""
    lines = prompt.splitlines()
    blocks = _blocks(lines)
    if not blocks:
        return None
    if len(blocks) > 1:
        wanted = doc_options(doc or {})
        chosen = [b for b in blocks if wanted is not None and list(b.options.texts) == wanted]
        if len(chosen) != 1:
            raise AmbiguousOptionsError(
                f"the prompt shows {len(blocks)} option blocks (lines "
                f"{', '.join(f'{b.start + 1}-{b.end}' for b in blocks)}) and the doc's options do not single one out"
            )
        blocks = chosen
    return replace(blocks[0].options, question=clean_question(lines[: blocks[0].start]))


def question_text(prompt: str, doc: dict | None = None) -> str:
    """The prompt's question: the cleaned text before the options it shows, else the whole
    prompt cleaned of scaffolding."""
    options = parse_options(prompt, doc)
    return options.question if options is not None else clean_question(prompt.splitlines())

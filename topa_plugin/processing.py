"""TopaProcessor: the three TOPA prompt templates on top of any Hugging Face tokenizer.

Token layout (docs/method.md section 4)::

    <s> + tokens("Instruction: {instruction}\\nVideo:") + max_feats video slots + newline token
        + tokens(rest) + </s>

Both text parts are tokenised as whole strings without special tokens, exactly as the release's
``sp.encode(s)``. For a Llama-2 sentencepiece tokenizer loaded with ``AutoTokenizer`` this equals
``SentencePieceProcessor.encode`` (dummy-prefix space included) because no template string starts
with a space; special-token text inside a question (``"</s>"``) is tokenised as plain text, as
sentencepiece does. For byte-level BPE tokenizers (Llama-3, tiktoken-style) the same strings go
through the tokenizer with no prefix space, which is what the release's Llama-3 code does;
``<s>``/``</s>`` become the tokenizer's ``bos_token``/``eos_token`` (Gemma: ``<bos>``/``<eos>``).
A tokenizer without a BOS token (Qwen2/2.5/3, whose models are trained without one) gets no
``<s>``: the prompt starts with "Instruction". An EOS token is required: it ends every answer.

Labels (-100 elsewhere) cover the tokens the release trains on: everything after a fixed marker
in the rest string, through ``</s>``. The release finds these by token offsets from hard-coded
ids; the markers reproduce its Llama-2 choice without tying the code to one vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from topa_plugin.utils.constants import PROCESSOR_FILE
from topa_plugin.utils.token_counts import SegmentCounter

IGNORE_INDEX = -100

MC_INSTRUCTION = "Choose the correct answer based on the video and question."
SUMMARY_INSTRUCTION = "Generate a summary for the video."
OPEN_ENDED_INSTRUCTION = "Predict the answer based on the video and question."

# Text after which the release starts its labels, per template.
MC_ANSWER_MARKER = "Answer: The correct"
OPEN_ENDED_ANSWER_MARKER = "Answer"
SUMMARY_ANSWER_MARKER = "\nDescription"

# When "?" is appended to a question: "keep_period" unless it ends in "?" or "." (the release's evaluation
# prompts), "always" unless it ends in "?" (its TextVid training prompts: "... the task." -> "... the task.?").
QUESTION_MARK_RULES = ("keep_period", "always")


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt before tokenisation: the instruction, the text after the video, where supervision
    starts in that text (None: no labels) and whether ``</s>`` closes it."""

    instruction: str
    rest: str
    answer_char: int | None
    close: bool


@dataclass
class TopaPrompt:
    """One tokenised prompt: ``labels`` are -100 outside the supervised answer part."""

    input_ids: list[int]
    labels: list[int]
    video_start: int


def choice_letter(index: int) -> str:
    """``(A)`` for 0, ``(B)`` for 1, ... as in the release's answer mapping."""
    if not 0 <= index < 26:
        raise ValueError(f"choice index {index} out of range 0..25")
    return f"({chr(ord('A') + index)})"


class TopaProcessor:
    """Tokenizer + templates. ``newline_text`` is the text whose single token follows the video slots."""

    def __init__(self, tokenizer, max_feats: int = 10, newline_text: str = "\n"):
        self.tokenizer = tokenizer
        self.max_feats = int(max_feats)
        self.newline_text = newline_text
        self._context_lengths: dict[str, int] = {}
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {name!r} has no eos token; TOPA answers end with it")
        self.bos_id = tokenizer.bos_token_id  # None: the family uses no BOS
        self.eos_id = tokenizer.eos_token_id
        if not self.encode_text("Video:"):
            # transformers 5 LlamaTokenizer(vocab_file=...) silently returns empty ids.
            raise ValueError(f"tokenizer {name!r} returns no ids for text; load it with AutoTokenizer.from_pretrained(dir)")
        self.newline_id = self._single_token(newline_text, name)
        # Video slots are overwritten by video embeddings; any valid id serves as the placeholder.
        for candidate in (tokenizer.unk_token_id, tokenizer.pad_token_id, self.eos_id):
            if candidate is not None:
                self.placeholder_id = candidate
                break

    def _single_token(self, text: str, name: str) -> int:
        """The id whose piece is ``text`` (sentencepiece prepends a dummy-prefix piece: skip it)."""
        ids = self.encode_text(text)
        if not ids or self.tokenizer.decode([ids[-1]]) != text:
            raise ValueError(f"tokenizer {name!r} has no single token for {text!r} (got ids {ids})")
        return ids[-1]

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added and none parsed from the text."""
        return list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    @staticmethod
    def normalize_question(question: str, question_mark: str = "keep_period") -> str:
        """The release's rule: ``capitalize().strip()``, then "?" appended per ``question_mark``.

        ``keep_period`` (evaluation): unless it ends in "?" or "."; ``always`` (TextVid training):
        unless it ends in "?".
        """
        if question_mark not in QUESTION_MARK_RULES:
            raise ValueError(f"question_mark={question_mark!r}: expected one of {', '.join(QUESTION_MARK_RULES)}")
        text = question.capitalize().strip()
        if not text:
            raise ValueError(f"empty question: {question!r}")
        if text[-1] not in ("?." if question_mark == "keep_period" else "?"):
            text += "?"
        return text

    def _head(self, instruction: str) -> list[int]:
        bos = [] if self.bos_id is None else [self.bos_id]
        return [*bos, *self.encode_text(f"Instruction: {instruction}\nVideo:")]

    def context_length(self, instruction: str) -> int:
        """Tokens before the text part: <s>, the instruction line, the video slots and the newline."""
        if instruction not in self._context_lengths:
            self._context_lengths[instruction] = len(self._head(instruction)) + self.max_feats + 1
        return self._context_lengths[instruction]

    def build(self, template: PromptTemplate) -> TopaPrompt:
        """Assemble ids and labels; supervision starts at ``template.answer_char`` of the rest (None: none)."""
        head = self._head(template.instruction)
        video_start = len(head)
        body = self.encode_text(template.rest)
        tail = [self.eos_id] if template.close else []
        input_ids = head + [self.placeholder_id] * self.max_feats + [self.newline_id] + body + tail
        n_context = len(input_ids) - len(body) - len(tail)
        if template.answer_char is None:
            return TopaPrompt(input_ids, [IGNORE_INDEX] * len(input_ids), video_start)
        before = self.encode_text(template.rest[:template.answer_char])
        n_shared = 0
        while n_shared < min(len(before), len(body)) and before[n_shared] == body[n_shared]:
            n_shared += 1
        first = n_context + n_shared
        labels = [IGNORE_INDEX] * first + input_ids[first:]
        return TopaPrompt(input_ids, labels, video_start)

    def prompt_text(self, template: PromptTemplate, video_marker: str) -> str:
        """The text a prompt tokenises from (BOS aside), its ``max_feats`` video slots shown as ``video_marker``."""
        return f"Instruction: {template.instruction}\nVideo:{video_marker}{self.newline_text}{template.rest}"

    def multiple_choice_template(self, question: str, options: list[str], answer: int | None,
                                 question_mark: str = "keep_period") -> PromptTemplate:
        if not options:
            raise ValueError("multiple-choice prompt needs at least one option")
        lines = "".join(f"{choice_letter(i)} {option}\n" for i, option in enumerate(options))
        question = self.normalize_question(question, question_mark)
        rest = f"Question: {question}\nChoices: \n{lines}Answer: The correct choice is"
        if answer is None:
            return PromptTemplate(MC_INSTRUCTION, rest, None, close=False)
        if not 0 <= answer < len(options):
            raise ValueError(f"answer index {answer} out of range for {len(options)} options")
        marker = rest.rindex(MC_ANSWER_MARKER) + len(MC_ANSWER_MARKER)
        return PromptTemplate(MC_INSTRUCTION, f"{rest} {choice_letter(answer)}", marker, close=True)

    def summary_template(self, caption: str | None = None) -> PromptTemplate:
        if caption is None:
            return PromptTemplate(SUMMARY_INSTRUCTION, "\nDescription:", None, close=False)
        return PromptTemplate(SUMMARY_INSTRUCTION, f"\nDescription: {caption}\n", len(SUMMARY_ANSWER_MARKER), close=True)

    def open_ended_template(self, question: str, answer: str | None = None,
                            question_mark: str = "keep_period") -> PromptTemplate:
        prefix = f"Question: {self.normalize_question(question, question_mark)}\n"
        if answer is None:
            return PromptTemplate(OPEN_ENDED_INSTRUCTION, prefix + "Answer:", None, close=False)
        marker = len(prefix) + len(OPEN_ENDED_ANSWER_MARKER)
        return PromptTemplate(OPEN_ENDED_INSTRUCTION, f"{prefix}Answer: {answer.strip()}\n", marker, close=True)

    def encode_multiple_choice(self, question: str, options: list[str], answer: int | None,
                               question_mark: str = "keep_period") -> TopaPrompt:
        """Multiple-choice prompt; ``answer=None`` stops after "The correct choice is" (no </s>, no labels)."""
        return self.build(self.multiple_choice_template(question, options, answer, question_mark))

    def encode_summary(self, caption: str | None = None) -> TopaPrompt:
        """Summary prompt; ``caption=None`` gives the generation prompt ending in "Description:"."""
        return self.build(self.summary_template(caption))

    def encode_open_ended(self, question: str, answer: str | None = None,
                          question_mark: str = "keep_period") -> TopaPrompt:
        """Open-ended QA prompt; ``answer=None`` gives the generation prompt ending in "Answer:"."""
        return self.build(self.open_ended_template(question, answer, question_mark))

    @cached_property
    def _segment_counter(self) -> SegmentCounter | None:
        return SegmentCounter.for_tokenizer(self.tokenizer)

    def __getstate__(self):  # the counter's cache and closures stay in this process
        return {k: v for k, v in self.__dict__.items() if k != "_segment_counter"}

    def count_tokens(self, texts: list[str]) -> list[int]:
        """``len(encode_text(t))`` for each text: by cached whitespace segments where that is provably
        exact (``SegmentCounter``: Llama-2-style tokenizers), else by the tokenizer."""
        if self._segment_counter is None:
            return self.tokenize_counts(texts)
        counts = self._segment_counter(texts)
        missing = [i for i, n in enumerate(counts) if n is None]
        for i, n in zip(missing, self.tokenize_counts([texts[i] for i in missing])):
            counts[i] = n
        return counts

    def tokenize_counts(self, texts: list[str]) -> list[int]:
        """``len(encode_text(t))`` for each text, in one batched tokenizer call (straight to the Rust
        tokenizer when there is one: the Python wrapper costs as much as the tokenizing)."""
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_special_tokens"):
            ids = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            return [len(x) for x in ids]
        previous = backend.encode_special_tokens
        backend.encode_special_tokens = True  # what split_special_tokens=True sets
        try:
            return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
        finally:
            backend.encode_special_tokens = previous

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def save_pretrained(self, directory: str | Path) -> None:
        """Tokenizer files plus ``topa_processor.json`` (max_feats, newline text)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        settings = {"max_feats": self.max_feats, "newline_text": self.newline_text}
        (directory / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> TopaProcessor:
        """Load the tokenizer of a local directory (never downloads) and its saved settings.

        AutoTokenizer reads ``config.json`` first; in a plugin directory that is a TOPA config,
        and if "topa" is not registered with AutoConfig yet (nothing imported
        ``topa_plugin.configuration``) it falls back to a bare config and logs a model-type
        mismatch warning. Importing the module registers it.
        """
        from transformers import AutoTokenizer

        from topa_plugin import configuration  # noqa: F401 (registers the "topa" model type)

        directory = Path(directory)
        settings_path = directory / PROCESSOR_FILE
        settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
        settings.update(overrides)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        return cls(tokenizer, **settings)

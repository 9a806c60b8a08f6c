"""What each generation request asks for: the seeded conditions of a source and the prompt templates."""

from __future__ import annotations

import functools
import json
import os
import random
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from topa_plugin.textvid.errors import GenerationError

BUILTIN_SOURCES = ("howto", "webvid", "ego", "objects")
FRAME_RANGE = (5, 15)
_TEMPLATE_FIELDS = "$condition, $source_instruction, $min_frames, $max_frames ($$ for a literal $)"


def _package_file(*parts: str) -> Path:
    return Path(str(resources.files(__package__).joinpath(*parts)))


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)


@dataclass(frozen=True)
class Conditions:
    """The lines a source offers; ``tag`` prefixes record ids, ``kind`` picks the source instruction."""

    tag: str
    kind: str
    lines: tuple[str, ...]

    def pick(self, seed: int, request: int) -> str:
        """Condition of request number ``request``: each pass over the list is a fresh seeded
        permutation, so every condition is used once before any is used again."""
        epoch, pos = divmod(request, len(self.lines))
        return self.lines[_permutation(seed, epoch, len(self.lines))[pos]]


def load_conditions(source: str) -> Conditions:
    """A built-in seed list (howto, webvid, ego, objects) or a UTF-8 file, one condition per
    line; blank lines separate nothing and are not conditions."""
    if source in BUILTIN_SOURCES:
        path, kind, tag = _package_file("seeds", f"{source}.txt"), source, source
    else:
        path = Path(source)
        if not path.is_file():
            raise GenerationError(f"--source {source!r} is neither one of {', '.join(BUILTIN_SOURCES)} nor a file")
        kind, tag = "file", re.sub(r"[^A-Za-z0-9]+", "-", path.stem).strip("-") or "file"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GenerationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not lines:
        raise GenerationError(f"{path}: no conditions (expected one per line)")
    return Conditions(tag, kind, lines)


@dataclass(frozen=True)
class PromptTemplate:
    """System text, user template and the source's instruction, all ``string.Template`` ($name)."""

    system: str
    user: string.Template
    instruction: string.Template

    def messages(self, condition: str) -> list[dict[str, str]]:
        instruction = self.instruction.substitute(condition=condition)
        user = self.user.substitute(condition=condition, source_instruction=instruction,
                                    min_frames=FRAME_RANGE[0], max_frames=FRAME_RANGE[1])
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def load_prompt(kind: str, template: str | os.PathLike | None = None) -> PromptTemplate:
    """The packaged prompt for a source kind; ``template`` replaces the user message template."""
    instructions = json.loads(_package_file("prompts", "sources.json").read_text(encoding="utf-8"))
    path = Path(template) if template is not None else _package_file("prompts", "tideo.txt")
    try:
        user_text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GenerationError(f"--prompt-template {path}: cannot read: {e}") from e
    prompt = PromptTemplate(
        system=_package_file("prompts", "system.txt").read_text(encoding="utf-8").strip(),
        user=string.Template(user_text),
        instruction=string.Template(instructions[kind]),
    )
    probe = "\x00condition\x00"
    try:
        user = prompt.messages(probe)[1]["content"]
    except KeyError as e:
        raise GenerationError(f"{path}: unknown placeholder ${e.args[0]}; available: {_TEMPLATE_FIELDS}") from e
    except ValueError as e:
        raise GenerationError(f"{path}: malformed placeholder ({e}); available: {_TEMPLATE_FIELDS}") from e
    if probe not in user:
        raise GenerationError(f"{path}: uses neither $condition nor $source_instruction, "
                              "so every request would get the same prompt")
    return prompt

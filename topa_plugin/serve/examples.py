"""The example videos ``topa serve --examples DIR`` offers for one click.

Every video file in DIR is an example. An optional ``DIR/examples.jsonl`` gives some of them a question and
options: one object per line, ``{"video": "clip.mp4", "question": "...", "options": ["...", "..."]}``."""

from __future__ import annotations

import json
from pathlib import Path

from topa_plugin.utils.errors import TopaInputError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
QUESTIONS_FILE = "examples.jsonl"


class ExamplesError(TopaInputError, ValueError):
    """An examples folder that cannot be offered; the message names the folder, file, line and field."""


def list_examples(folder: str | Path) -> list[list[str]]:
    """Rows of (video path, question, options one per line) for ``gr.Examples``, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExamplesError(f"--examples {folder}: not a folder")
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ExamplesError(f"--examples {folder}: holds no video ({', '.join(VIDEO_SUFFIXES)})")
    prompts = _read_questions(folder / QUESTIONS_FILE, {p.name for p in videos})
    return [[str(p.resolve()), *prompts.get(p.name, ("", ""))] for p in videos]


def _read_questions(path: Path, names: set[str]) -> dict[str, tuple[str, str]]:
    if not path.is_file():
        return {}
    prompts = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ExamplesError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ExamplesError(f"{where}: expected an object with video, question, options")
        video, question, options = row.get("video"), row.get("question", ""), row.get("options", [])
        if video not in names:
            raise ExamplesError(f"{where}: field video {video!r} names no video in {path.parent}")
        if not isinstance(question, str):
            raise ExamplesError(f"{where}: field question must be a string")
        if not isinstance(options, list) or not all(isinstance(o, str) and "\n" not in o for o in options):
            raise ExamplesError(f"{where}: field options must be a list of one-line strings")
        prompts[video] = (question, "\n".join(options))
    return prompts

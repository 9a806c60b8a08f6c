"""The examples folder of ``topa serve --examples``: every video, questions from examples.jsonl, errors that name the line."""

from __future__ import annotations

import json

import pytest

from topa_plugin.serve.examples import ExamplesError, list_examples


def _videos(folder, *names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"video bytes")
    return folder


def test_every_video_is_an_example_with_its_question(tmp_path):
    folder = _videos(tmp_path / "ex", "b.mp4", "a.webm", "notes.txt")
    (folder / "examples.jsonl").write_text(json.dumps({"video": "b.mp4", "question": "What?", "options": ["x", "y"]}) + "\n\n")
    assert list_examples(folder) == [[str((folder / "a.webm").resolve()), "", ""],
                                     [str((folder / "b.mp4").resolve()), "What?", "x\ny"]]


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 1: not JSON"),
    ("[1, 2]", "line 1: expected an object"),
    (json.dumps({"video": "c.mp4", "question": "q"}), "line 1: field video 'c.mp4' names no video"),
    (json.dumps({"video": "a.mp4", "question": 3}), "line 1: field question must be a string"),
    (json.dumps({"video": "a.mp4", "question": "q", "options": ["x\ny"]}), "line 1: field options must be a list of one-line strings"),
])
def test_bad_question_lines_name_file_line_and_field(tmp_path, line, message):
    folder = _videos(tmp_path / "ex", "a.mp4")
    (folder / "examples.jsonl").write_text(line + "\n")
    with pytest.raises(ExamplesError) as raised:
        list_examples(folder)
    assert str(raised.value).startswith(f"{folder / 'examples.jsonl'} {message}")


def test_a_folder_without_videos_or_no_folder_is_refused(tmp_path):
    with pytest.raises(ExamplesError, match="holds no video"):
        list_examples(_videos(tmp_path / "empty", "readme.txt"))
    with pytest.raises(ExamplesError, match="not a folder"):
        list_examples(tmp_path / "missing")

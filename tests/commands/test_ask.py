"""`topa ask` through the CLI entry point: the answer and score table, --json, --report, and each bad input
as one `topa ask: error:` line with exit status 2, before any model loads where it can be."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers.lmms_fixtures import ROWS, build_topa_checkpoint, write_garbage_video
from topa_plugin.ask import Asker
from topa_plugin.cli import main
from topa_plugin.demo.toy import write_toy_video

QUESTION, TEXTS, CORRECT = ROWS[0]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, toy_llama_dir, toy_clip):
    root = tmp_path_factory.mktemp("ask_cli")
    checkpoint = build_topa_checkpoint(root / "checkpoint", toy_llama_dir)
    clip = ["--clip-model", str(toy_clip[0]), "--clip-pretrained", str(toy_clip[1]), "--device", "cpu"]
    video = write_toy_video(root / "clip.mp4", n_frames=20, seed=9)
    asker = Asker.from_pretrained(checkpoint, clip_model=str(toy_clip[0]), clip_pretrained=str(toy_clip[1]), device="cpu")
    return {"root": root, "checkpoint": checkpoint, "clip": clip, "video": video, "asker": asker}


def ask_args(ws, *extra, video=None, options=TEXTS):
    return ["ask", str(video or ws["video"]), "--checkpoint", str(ws["checkpoint"]), *ws["clip"],
            "--question", QUESTION, *(a for text in options for a in ("--option", text)), *extra]


def test_prints_the_answer_and_each_options_mean_nll(ws, capsys):
    assert main(ask_args(ws, "--answer", "B")) == 0
    out = capsys.readouterr().out
    expected = ws["asker"].ask(ws["video"], QUESTION, TEXTS)
    assert f"Answer: {expected.label}. {expected.answer}" in out
    rows = re.findall(r"^([* ]) ([A-E])\.  (.+?)\s+(\d+\.\d{4})(  \(correct\))?$", out, re.MULTILINE)
    assert [(letter, text.strip()) for _, letter, text, _, _ in rows] == list(zip("ABCDE", TEXTS))
    assert [float(score) for *_, score, _ in rows] == pytest.approx(expected.scores, abs=1e-4)
    assert [mark for mark, *_ in rows].index("*") == expected.answer_index
    assert [bool(c) for *_, c in rows] == [i == 1 for i in range(5)]


def test_json_is_one_object_with_the_answer_frames_and_prompt(ws, capsys):
    assert main(ask_args(ws, "--json", "--frames", "6", "--neighbors", "2")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["answer_index"] in range(5) and data["answer"] == TEXTS[data["answer_index"]]
    assert len(data["scores"]) == 5 and data["prompt"].startswith("Instruction: Choose the correct answer")
    assert [f["index"] for f in data["frames"]] == [0, 3, 7, 11, 15, 19]  # --frames 6 of 20
    assert all(len(f["neighbors"]) == 2 and f["timestamp"] == pytest.approx(f["index"] / 8) for f in data["frames"])


def test_without_options_the_answer_is_generated(ws, capsys):
    assert main(ask_args(ws, "--json", options=())) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["answer_index"] is None and data["scores"] == []
    assert data["answer"] == ws["asker"].ask(ws["video"], QUESTION).answer


def test_report_writes_the_explanation_page(ws, capsys):
    page = ws["root"] / "why.html"
    assert main(ask_args(ws, "--report", str(page), "--answer", "0")) == 0
    assert f"explanation: {page}" in capsys.readouterr().out
    html = page.read_text()
    assert html.startswith("<!doctype html>") and "data:image/jpeg;base64," in html and "data:image/svg+xml;base64," in html


@pytest.mark.parametrize("case, message", [
    ("missing video", r"video \S*nothing\.mp4: file not found"),
    ("undecodable video", r"\S*garbage\.mp4: cannot decode video"),
    ("one option", r"--option given once \('c cooks a meal'\); give two or more options"),
    ("not a checkpoint", r"checkpoint \S*not_a_checkpoint: no config.json, so not a TOPA plugin directory"),
    ("report in a missing folder", r"\S*no_such_folder/why.html: folder \S*no_such_folder does not exist"),
    ("bad answer", r"answer: 'Z' is neither an option label"),
])
def test_each_bad_input_is_one_error_line_and_exit_2(ws, capsys, case, message):
    root = ws["root"]
    args = {
        "missing video": ask_args(ws, video=root / "nothing.mp4"),
        "undecodable video": ask_args(ws, video=write_garbage_video(root / "garbage.mp4")),
        "one option": ask_args(ws, options=TEXTS[:1]),
        "not a checkpoint": [*ask_args(ws), "--checkpoint", str(root / "not_a_checkpoint")],
        "report in a missing folder": ask_args(ws, "--report", str(root / "no_such_folder" / "why.html")),
        "bad answer": ask_args(ws, "--answer", "Z"),
    }[case]
    (root / "not_a_checkpoint").mkdir(exist_ok=True)
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = [line for line in re.split(r"[\r\n]+", captured.err) if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("topa ask: error: "), captured.err
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in captured.err and captured.out == ""
    if case != "undecodable video":  # found before the model loads: nothing else is printed
        assert lines == errors, captured.err

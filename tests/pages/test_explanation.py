"""The explanation page of ``topa ask --report``: frames with their nearest textual frames (captions from a
memory built by ``topa memory build``), coverage, the option-score chart and the prompt, all escaped and
self-contained; in headless Chromium it shows them with no console errors and runs nothing from a question."""

from __future__ import annotations

import re

import pytest

from tests.helpers.browser import console_errors, file_url, open_browser, save_screenshot, screenshot_is_blank
from tests.helpers.lmms_fixtures import build_topa_checkpoint
from tests.helpers.memory_fixtures import build_textvid_memory
from topa_plugin.ask import Asker
from topa_plugin.demo.toy import write_toy_video
from topa_plugin.pages.explanation import explanation_html, write_explanation

EVIL = 'What is c doing? <script>window.pwned = 1</script> & "quotes"'
OPTIONS = ["c cooks a meal", "c cleans <b>the</b> kitchen", "c repairs a bicycle", "c paints a wall", "c plays"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, toy_llama_dir, toy_clip):
    root = tmp_path_factory.mktemp("explanation")
    _, _, memory = build_textvid_memory(root / "memory", toy_clip)
    checkpoint = build_topa_checkpoint(root / "checkpoint", toy_llama_dir)  # its own memory has no provenance
    clip = {"clip_model": str(toy_clip[0]), "clip_pretrained": str(toy_clip[1]), "device": "cpu"}
    with_text = Asker.from_pretrained(checkpoint, memory=memory, **clip)
    bare = Asker.from_pretrained(checkpoint, **clip)
    video = write_toy_video(root / "kitchen.mp4", n_frames=40, size=96, seed=3)
    return {"root": root, "with_text": with_text, "bare": bare, "video": video}


@pytest.fixture(scope="module")
def answer(ws):
    return ws["with_text"].ask(ws["video"], EVIL, OPTIONS, answer="C")


def test_each_frame_shows_its_nearest_captions_cosines_and_tideos(answer):
    html = explanation_html(answer)
    for frame in answer.frames:
        assert f"frame {frame.index} · {frame.timestamp:.2f} s" in html
        assert f"coverage {frame.coverage:.3f}" in html
        for n in frame.neighbors:
            assert n.text and f'<span class="caption">{_escaped(n.text)}</span>' in html
            assert f"Tideo {n.tideo}, frame {n.frame} · row {n.row}" in html
            assert f"{n.cosine:.3f}" in html
    assert html.count('<img class="thumb" src="data:image/jpeg;base64,') == len(answer.frames) == 10
    assert f"Threshold\n  <strong>{answer.coverage_threshold:.3f}</strong>" in html
    assert html.count("low-coverage") == sum(f.low_coverage for f in answer.frames)
    assert 'id="provenance-note"' not in html


def test_chart_prompt_and_marks_are_there_and_every_string_is_escaped(answer):
    html = explanation_html(answer)
    assert re.search(r'<img class="chart" id="scores-chart" src="data:image/svg\+xml;base64,', html)
    assert "<script>window.pwned" not in html and "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html
    assert "<b>the</b>" not in html and "c cleans &lt;b&gt;the&lt;/b&gt; kitchen" in html
    assert f'<pre id="prompt">{_escaped(answer.prompt)}</pre>' in html
    assert '<span class="flag good">correct</span>' in html and '<span class="flag">chosen</span>' in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from the network


def test_a_memory_without_provenance_shows_row_numbers_and_why(ws):
    html = explanation_html(ws["bare"].ask(ws["video"], "what happens?", OPTIONS[:2]))
    assert "No captions shown: memory.safetensors has no memory.provenance.jsonl beside it" in html
    assert 'class="caption"' not in html and re.search(r"<span class=\"muted\">row \d+</span>", html)


def test_a_generated_answer_has_no_chart(ws):
    answer = ws["with_text"].ask(ws["video"], "what happens?")
    html = explanation_html(answer)
    assert "Generated answer (no options)" in html and "scores-chart" not in html


def _escaped(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


@pytest.mark.slow
def test_in_chromium_frames_captions_and_chart_show_and_the_question_runs_nothing(ws, answer):
    page = write_explanation(answer, ws["root"] / "explanation.html")
    driver = open_browser(width=1280, height=1800)
    try:
        driver.get(file_url(page))
        assert console_errors(driver) == []
        assert driver.execute_script("return window.pwned === undefined")
        assert EVIL in driver.find_element("id", "question").text
        assert len(driver.find_elements("css selector", "#frames .frame")) == len(answer.frames)
        captions = driver.find_elements("css selector", "#frames .caption")
        assert len(captions) == sum(len(f.neighbors) for f in answer.frames)
        assert captions[0].text == answer.frames[0].neighbors[0].text
        loaded = "return [...document.images].every(img => img.complete && img.naturalWidth > 0)"
        assert driver.execute_script(loaded)
        assert driver.execute_script("return document.getElementById('scores-chart').naturalWidth") > 0
        shot = save_screenshot(driver, "explanation.png", ws["root"])
    finally:
        driver.quit()
    assert not screenshot_is_blank(shot)

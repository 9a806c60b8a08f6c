"""The run report page: what it holds, and what a person sees in headless Chromium (filters work, the
chart is there, a question holding <script> shows as text, the cards render)."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers.browser import console_errors, file_url, open_browser, save_screenshot, screenshot_is_blank
from tests.helpers.lmms_runs import GENERATE, LETTERS, MCPPL, egoschema_docs, write_lmms_run
from topa_plugin.lmms.run_report import read_lmms_run
from topa_plugin.pages.run_report import attach_thumbnails, write_run_report

pytest.importorskip("lmms_eval")

HOSTILE = "<script>window.pwned = 1</script> what does c <b>do</b>?"


@pytest.fixture
def runs(tmp_path):
    """Run A and run B over 9 docs (doc 0's question holds markup); A gets 0, 3, 6 right; B gets 0, 1 right."""
    from topa_plugin.demo.toy import write_toy_video

    docs = egoschema_docs(9, seed=1, videos=tmp_path / "videos")
    docs[0]["question"] = HOSTILE
    for i in range(6):  # the last three videos are missing
        write_toy_video(tmp_path / "videos" / f"video-{i:05d}.mp4", n_frames=8, seed=i)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    answers = [d["answer"] for d in docs]
    picks_a = [a if i % 3 == 0 else (a + 1) % 5 for i, a in enumerate(answers)]
    picks_b = [a if i < 2 else (a + 2) % 5 for i, a in enumerate(answers)]
    losses = [[4.0 - (j == p) * (0.2 + 0.1 * i) for j in range(5)] for i, p in enumerate(picks_a)]
    write_lmms_run(tmp_path / "a", {"gen": (GENERATE, docs, [LETTERS[p] for p in picks_a]),
                                    "ppl": (MCPPL, docs, losses)}, data_file=data)
    write_lmms_run(tmp_path / "b", {"gen": (GENERATE, docs, [LETTERS[p] for p in picks_b])}, data_file=data)
    return tmp_path


def test_page_holds_accuracy_charts_cards_and_changes(runs):
    report = write_run_report(runs / "report.html", runs / "a", runs / "b", thumbnails=2)
    html = report.path.read_text()
    assert report.missing_videos == 6  # 3 questions per task without a video
    assert html.count('class="chart bias"') == 2 and html.count('class="chart margin"') == 1
    assert "0.3333" in html and "3 / 9" in html
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S).group(1))
    assert len(data["cards"]) == 18 and data["tasks"] == ["gen", "ppl"]
    assert data["cards"][0]["q"] == HOSTILE and len(data["cards"][0]["f"]) == 2
    assert data["cards"][8]["f"] == [] and data["cards"][8]["n"] == "video video-00008 not found"
    assert [c["m"] is not None for c in data["cards"]] == [False] * 9 + [True] * 9
    assert HOSTILE not in html and "<script>window.pwned" not in html  # escaped inside the data
    # the task both runs share: doc 1 gained; docs 3 and 6 lost; the other wrong ones switched letters
    comparison = report.comparison
    assert ([a.doc_id for a, _ in comparison.gained], [a.doc_id for a, _ in comparison.lost]) == ([1], [3, 6])
    assert len(comparison.switched) == 5 and 'id="gained"' in html and 'id="lost"' in html


@pytest.mark.slow
def test_report_in_chromium_filters_sorts_and_escapes(runs, tmp_path):
    page = write_run_report(runs / "report.html", runs / "a", runs / "b", thumbnails=2).path
    driver = open_browser(width=1280, height=1500)
    try:
        driver.get(file_url(page))
        assert console_errors(driver) == []
        assert driver.execute_script("return document.body.dataset.ready") == "1"
        assert driver.execute_script("return window.pwned === undefined")
        cards = driver.find_elements("css selector", "#cards .qcard")
        assert len(cards) == 18 and driver.find_element("id", "count").text == "18"
        assert HOSTILE in cards[0].text  # shown as text, not run or parsed
        assert len(driver.find_elements("css selector", "img.chart.bias")) == 2
        assert driver.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")

        driver.find_element("id", "verdict-wrong").click()
        wrong = driver.find_elements("css selector", "#cards .qcard")
        assert len(wrong) == 12 and driver.find_element("id", "count").text == "12"
        assert all(card.text.startswith("wrong") for card in wrong)

        driver.execute_script("const s = document.getElementById('task'); s.value = 'ppl'; s.dispatchEvent(new Event('change'))")
        driver.execute_script("const s = document.getElementById('sort'); s.value = 'margin-asc'; s.dispatchEvent(new Event('change'))")
        margins = [float(m) for m in re.findall(r"margin: ([0-9.]+)", driver.find_element("id", "cards").text)]
        assert len(margins) == 6 and margins == sorted(margins)

        driver.find_element("id", "verdict-changed").click()
        driver.execute_script("const s = document.getElementById('task'); s.value = 'gen'; s.dispatchEvent(new Event('change'))")
        assert driver.find_element("id", "count").text == "8"  # every doc but 0 got another letter in B

        driver.find_element("id", "verdict-all").click()
        for select, value in (("task", ""), ("sort", "doc")):
            driver.execute_script(f"const s = document.getElementById('{select}'); s.value = '{value}'; "
                                  "s.dispatchEvent(new Event('change'))")
        assert driver.find_element("id", "count").text == "18" and console_errors(driver) == []
        driver.set_window_size(1280, 2600)
        driver.execute_script("window.scrollTo(0, 0)")
        shot = save_screenshot(driver, "report.png", tmp_path)
    finally:
        driver.quit()
    assert not screenshot_is_blank(shot)


@pytest.mark.slow
def test_cards_render_in_chunks_as_the_page_scrolls(tmp_path):
    docs = egoschema_docs(500, seed=2)
    write_lmms_run(tmp_path / "run", {"gen": (GENERATE, docs, ["A"] * 500)})
    page = write_run_report(tmp_path / "report.html", tmp_path / "run", thumbnails=0).path
    driver = open_browser(width=1280, height=900)
    try:
        driver.get(file_url(page))
        first = len(driver.find_elements("css selector", "#cards .qcard"))
        assert 0 < first < 500 and driver.find_element("id", "count").text == "500"
        for _ in range(60):
            driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
            if driver.execute_script("return document.querySelectorAll('#cards .qcard').length") == 500:
                break
        assert len(driver.find_elements("css selector", "#cards .qcard")) == 500
        assert driver.find_element("id", "more").text == "end of list"
        assert console_errors(driver) == []
    finally:
        driver.quit()


def test_thumbnails_of_reachable_videos_and_a_count_of_missing_ones(tmp_path):
    from topa_plugin.demo.toy import write_toy_video

    docs = egoschema_docs(3, videos=tmp_path / "videos")
    write_toy_video(tmp_path / "videos" / "video-00000.mp4", n_frames=10, seed=0)
    (tmp_path / "videos" / "video-00001.mp4").write_bytes(b"not a video")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    write_lmms_run(tmp_path / "out", {"t": (GENERATE, docs, ["A", "B", "C"])}, data_file=data)
    questions = read_lmms_run(tmp_path / "out").questions
    assert [q.video is not None for q in questions] == [True, True, False]
    assert attach_thumbnails(questions, frames=3, side=32) == 2
    assert len(questions[0].frames) == 3 and all(f.startswith("data:image/jpeg;base64,") for f in questions[0].frames)
    assert "cannot decode" in questions[1].frames_note and questions[1].frames == []
    assert questions[2].frames_note == "video video-00002 not found"

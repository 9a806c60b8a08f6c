"""The TextVid quality page: every figure shown, two files side by side, text escaped, and a real browser
renders it without errors (``TOPA_SAVE_SCREENSHOTS=1``: its screenshot becomes the docs' picture)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.browser import DOCS_IMAGES, console_errors, file_url, open_browser, save_screenshot, screenshot_is_blank
from tests.helpers.textvid_synth import near_copy, unique_record, write_jsonl
from topa_plugin.pages.textvid_report import file_labels, findings, render_report, write_report
from topa_plugin.textvid import sample_path
from topa_plugin.textvid.quality import quality_report


def hostile_file(path: Path) -> Path:
    """Near-duplicate Tideos whose captions and question carry markup."""
    first = unique_record(1)
    first["frames"][9]["frame_caption"] = "<script>window.pwned = 1</script> & <b>bold</b>"
    first["QAs"][0]["options"][1] = "OPTION 0 OF TIDEO 1?"  # duplicates option 0 up to case and punctuation
    return write_jsonl(path, [first, unique_record(2), near_copy(first, "copy_1", changed=1)])


def test_page_shows_each_file_side_by_side_and_escapes_text(tmp_path):
    reports = [quality_report(sample_path()), quality_report(hostile_file(tmp_path / "textvid_sample.jsonl"))]
    html = render_report(reports)
    assert file_labels(reports) == ["A: textvid_sample.jsonl", "B: textvid_sample.jsonl"]
    assert "<script>window.pwned" not in html and "&lt;script&gt;window.pwned = 1&lt;/script&gt; &amp; &lt;b&gt;" in html
    for section in ("id=\"shortcuts\"", "id=\"letters\"", "id=\"diversity\"", "id=\"degenerate\"", "class=\"pair\""):
        assert section in html
    assert html.count("data:image/svg+xml;base64,") == 3 + 5  # shortcuts, letters, types, five distributions
    assert "copy_1" in html and "similarity 0.978" in html
    assert any("duplicate" in line or "same words" in line for line in findings(reports[1]))
    assert any("longest option" in line for line in findings(reports[0])) == (
        reports[0]["shortcuts"]["longest_option"]["flag"] is not None)


@pytest.mark.slow
def test_report_of_the_bundled_sample_in_chromium(tmp_path, monkeypatch):
    monkeypatch.chdir(DOCS_IMAGES.parents[1])  # the page names the file as given: relative to the repository
    page = write_report(tmp_path / "report.html", [quality_report(os.path.relpath(sample_path()))])
    driver = open_browser(width=1280, height=2200)
    try:
        driver.get(file_url(page))
        assert console_errors(driver) == []
        assert driver.title == "TextVid quality: textvid_sample.jsonl"
        rows = driver.find_elements("css selector", "#shortcuts tr")
        assert len(rows) == 4
        charts = driver.find_elements("css selector", "img.chart")
        assert len(charts) == 8 and all(driver.execute_script("return arguments[0].naturalWidth", c) > 0 for c in charts)
        shot = save_screenshot(driver, "textvid-report.png", tmp_path)
    finally:
        driver.quit()
    assert not screenshot_is_blank(shot)


@pytest.mark.slow
def test_cluster_filter_in_chromium(tmp_path):
    page = write_report(tmp_path / "report.html", [quality_report(hostile_file(tmp_path / "hostile.jsonl"))])
    driver = open_browser()
    try:
        driver.get(file_url(page))
        assert driver.execute_script("return window.pwned === undefined")
        items = driver.find_elements("css selector", ".clusters li")
        assert [i.text for i in items] == ["tideo_00001 ~ copy_1"]
        box = driver.find_element("css selector", ".cluster-filter")
        box.send_keys("nothing-like-this")
        assert driver.find_elements("css selector", ".clusters li") == []
        assert console_errors(driver) == []
    finally:
        driver.quit()

"""The browser helper itself: a page's script error is seen, escaped text stays text, screenshots judge blankness."""

import pytest

from tests.helpers.browser import console_errors, file_url, open_browser, screenshot_is_blank
from topa_plugin.pages.render import render

pytestmark = pytest.mark.slow


def test_console_errors_and_escaping_in_chromium(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(render("base.html.j2", title="<script>window.ran = 1</script>")
                    .replace("</body>", "<h1 id=h>hello</h1><script>undefinedFunction()</script></body>"))
    driver = open_browser()
    try:
        driver.get(file_url(page))
        assert driver.title == "<script>window.ran = 1</script>"
        assert driver.execute_script("return window.ran === undefined")
        assert any("undefinedFunction" in message for message in console_errors(driver))
        shot = tmp_path / "shot.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert not screenshot_is_blank(shot, min_colors=2)


def test_blank_screenshot_is_detected(tmp_path):
    from PIL import Image

    Image.new("RGB", (100, 100), "white").save(tmp_path / "white.png")
    assert screenshot_is_blank(tmp_path / "white.png")

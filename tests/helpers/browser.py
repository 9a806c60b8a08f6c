"""Open a page in the system's headless Chromium (Debian's ``chromium`` + ``chromium-driver``, which
``.ci/run`` installs) through Selenium, and check what a person would see: no console errors, the
expected elements, a screenshot that is not blank.

Selenium is pointed at the system driver, so Selenium Manager never tries to download one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = ("chromium", "chromium-browser")
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
DRIVER = "chromedriver"


def chromium_paths() -> tuple[str, str] | None:
    browser = next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)
    driver = shutil.which(DRIVER)
    return (browser, driver) if browser and driver else None


def require_chromium() -> tuple[str, str]:
    """The browser and driver paths; skips locally without them, fails in CI (which must install them)."""
    paths = chromium_paths()
    if paths is None:
        message = "headless Chromium not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return paths


def open_browser(width: int = 1280, height: int = 1600):
    """A headless Chromium WebDriver that records the page's console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def console_errors(driver) -> list[str]:
    """Console messages at level SEVERE since the last call (JavaScript errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def file_url(path: str | Path) -> str:
    return Path(path).resolve().as_uri()


def screenshot_is_blank(png: str | Path, min_colors: int = 16) -> bool:
    """True when the screenshot holds fewer than ``min_colors`` distinct colours (an empty or failed page)."""
    from PIL import Image

    with Image.open(png) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return colors is not None and len(colors) < min_colors


def save_screenshot(driver, name: str, tmp_path: Path) -> Path:
    """A screenshot of what the page shows now, as ``tmp_path/name``; with ``TOPA_SAVE_SCREENSHOTS=1``, under
    ``DOCS_IMAGES`` instead (the docs' picture), so an ordinary test run never rewrites tracked files."""
    path = DOCS_IMAGES / name if os.environ.get("TOPA_SAVE_SCREENSHOTS") == "1" else Path(tmp_path) / name
    driver.save_screenshot(str(path))
    return path

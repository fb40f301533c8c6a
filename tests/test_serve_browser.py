# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The ``tstitch serve`` page in a real browser: headless Chromium from the system's packages, driven by
Selenium. One server and one browser for the module; skipped, with the reason, where they are missing."""

from __future__ import annotations

import re

import pytest

from tstitch.serve import browser

REASON = browser.missing_browser()
if REASON is None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        REASON = "gradio is not installed (pip install 'tstitch[web]')"
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no browser test: {REASON}")

CAPTION = re.compile(r"^r (0\.3|0\.5): \d+\.\d{3} s, \d+\.\d\dx speed-up$")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from tstitch.serve.app import make_state, start

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        absent = tmp_path_factory.mktemp("frontier") / "none.json"
        state, default = make_state()
        state.frontier_files = (str(absent),)  # the page without a measured frontier
        app, url = start(state, default, port=browser.free_port())
        driver = browser.open_driver()
        try:
            browser.load(driver, url)
            yield driver
        finally:
            driver.quit()
            app.close()


def test_generate_two_fractions_shows_times_and_speedups(page, tmp_path):
    from selenium.webdriver.common.by import By

    browser.set_fractions(page, ["0.3", "0.5"])
    browser.set_number(page, "steps", "10")
    captions = browser.generate(page, expected_tiles=3)
    assert re.match(r"^digits-xl alone: \d+\.\d{3} s \(reference\)$", captions[0]), captions
    assert all(CAPTION.match(text) for text in captions[1:]), captions
    assert [text.split(":")[0] for text in captions[1:]] == ["r 0.3", "r 0.5"]
    note = page.find_element(By.ID, "frontier-note").text
    assert note.startswith("No measured frontier of digits-s -> digits-xl in /"), note  # the fixture gives none
    shot = tmp_path / "page.png"
    assert page.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_bad_input_shows_the_message_and_the_page_keeps_working(page):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_fractions(page, ["0.4"])
    browser.set_number(page, "steps", "0")
    from selenium.webdriver.common.by import By

    page.find_element(By.ID, "generate").click()
    messages = WebDriverWait(page, 30, poll_frequency=0.2).until(lambda d: browser.error_messages(d))
    assert "steps must be in [1, 1000], got 0" in messages
    browser.set_number(page, "steps", "6")
    captions = browser.generate(page, expected_tiles=2)
    assert captions[1].startswith("r 0.4: ")

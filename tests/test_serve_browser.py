# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The ``tstitch serve`` page in a real browser: headless Chromium from the system's packages, driven by
Selenium (``browser.py``). One server and one browser for the module, at desktop (1400x1000) and phone
(400x850) sizes; few tests, each checking much. Skipped, with the reason, where the browser is missing."""

from __future__ import annotations

import json
import logging
import os
import re
import time

import browser
import pytest

REASON = browser.missing_browser()
if REASON is None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        REASON = "gradio is not installed (pip install 'tstitch[web]')"
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no browser test: {REASON}")

CAPTION = re.compile(r"^r (0\.3|0\.5): \d+\.\d{3} s, \d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\)(, within noise)?$")


class Page:
    """The module's browser, its server's state and what the tests need to read of both."""

    def __init__(self, driver, state):
        self.driver, self.state = driver, state

    def by_id(self, elem_id: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, elem_id)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from tstitch.serve.app import make_state, start, use_one_thread_for_tiny_models

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        folder = tmp_path_factory.mktemp("frontier")
        rows = [{"models": ["digits-s", "digits-xl"], "fractions": [r], "fid": 5 + 40 * r ** 3, "speedup": 1 + 3 * r,
                 "num_samples": 600} for r in [i / 10 for i in range(11)]]
        (folder / "results.json").write_text(json.dumps({"rows": rows, "config": {"batch_size": 100}}))
        state, default = make_state(frontier=str(folder / "results.json"), plans_under=folder)
        use_one_thread_for_tiny_models(state, default)
        app, url = start(state, default, port=browser.free_port())
        try:
            with browser.driver(*browser.DESKTOP) as driver:
                browser.resize(driver, *browser.DESKTOP)
                browser.load(driver, url)
                yield Page(driver, state)
        finally:
            app.close()


def inside(box: dict, outer: dict, slack: float = 1.0) -> bool:
    return (box["left"] >= outer["left"] - slack and box["right"] <= outer["right"] + slack
            and box["top"] >= outer["top"] - slack and box["bottom"] <= outer["bottom"] + slack)


def layout_problems(driver, width: int) -> list[str]:
    """What is cut off or scrolls inside itself at this width (element boxes, not pixels)."""
    problems = []
    document, viewport = browser.page_width(driver)
    if document > viewport:
        problems.append(f"the page is {document} px wide in a {viewport} px window")
    found = browser.boxes(driver, {"gallery": "#gallery", "tiles": "#gallery .thumbnail-item",
                                   "captions": "#gallery .caption-label", "table": "#table table",
                                   "cells": "#table td", "frontier": "#frontier img", "status": "#status"})
    gallery = found["gallery"][0]
    for name in ("tiles", "captions", "cells", "table", "frontier", "status"):
        for box in found[name]:
            if box["left"] < 0 or box["right"] > width + 1:
                problems.append(f"a {name[:-1] if name.endswith('s') else name} reaches past the window: {box}")
    problems += [f"a tile is cut off by the gallery: {box}" for box in found["tiles"] if not inside(box, gallery)]
    problems += [f"a caption is cut off: {box}" for box in found["captions"] if not inside(box, gallery)]
    clipped = driver.execute_script("""return Array.from(document.querySelectorAll('#gallery .caption-label'))
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)""")
    problems += [f"a caption is cut short: {text}" for text in clipped]
    problems += [f"the gallery scrolls inside itself: {s}" for s in browser.inner_scroll(driver, "#gallery")]
    return problems


def test_desktop_and_phone_layouts_honest_captions_and_accessibility(page):
    """Default-like request at 100 steps (the longest model-per-step string the issue saw break the table):
    the captions, the r 0 reference, the layout at both sizes, alt text, contrast, the heading, the live
    progress line and the examples."""
    from selenium.webdriver.common.by import By

    driver = page.driver
    assert driver.find_element(By.CSS_SELECTOR, "#intro h1").text == "tstitch: trajectory stitching"
    from tstitch.serve.app import README

    links = driver.find_elements(By.CSS_SELECTOR, "#intro a")  # to the README, in a source checkout
    assert "README" in page.by_id("intro").text and len(links) == README.is_file()
    assert len(driver.find_elements(By.CSS_SELECTOR, "[id^=example-]")) == 3
    browser.set_fractions(driver, ["0", "0.3", "0.5"])
    browser.set_number(driver, "steps", "100")
    browser.set_number(driver, "images", "4")
    captions = browser.generate(driver, expected_tiles=3)
    assert re.match(r"^r 0 \(digits-xl alone\): \d+\.\d{3} s, the reference \(1\.00x\)$", captions[0]), captions
    assert all(CAPTION.match(text) for text in captions[1:]), captions
    assert browser.status(driver).startswith("done: 3 runs x 3 repetitions in ")
    status = page.by_id("status")
    assert (status.get_attribute("role"), status.get_attribute("aria-live")) == ("status", "polite")
    table = page.by_id("table")
    assert "median of 3 repetitions" in table.find_element(By.TAG_NAME, "caption").text
    assert "1.00x (reference)" in table.text
    alts = [img.get_attribute("alt") for img in driver.find_elements(By.CSS_SELECTOR, "#gallery img, #frontier img")]
    assert len(alts) == 4 and all(alts), alts
    assert "FID against speed-up" in alts[-1]
    for swatch in driver.find_elements(By.CSS_SELECTOR, "#legend .model-swatch"):
        colours = [tuple(int(c) for c in re.findall(r"\d+", swatch.value_of_css_property(prop))[:3])
                   for prop in ("color", "background-color")]
        from tstitch.serve.views import contrast_ratio

        assert contrast_ratio(*colours) >= 4.5, colours
    assert not layout_problems(driver, browser.DESKTOP[0])
    tiles = browser.boxes(driver, {"tiles": "#gallery .thumbnail-item"})["tiles"]
    assert max(box["bottom"] for box in tiles) <= browser.DESKTOP[1]  # every tile in the first screen
    browser.resize(driver, *browser.PHONE)
    try:
        time.sleep(0.5)
        assert not layout_problems(driver, browser.PHONE[0])
        cells = browser.boxes(driver, {"cells": "#table td"})["cells"]
        assert len(cells) == 3 * 9 and all(box["right"] <= browser.PHONE[0] for box in cells)
    finally:
        browser.resize(driver, *browser.DESKTOP)


def test_closed_model_box_and_an_error_after_a_success_keeps_the_results(page, caplog, capfd):
    """Free text in the model box is not taken; a bad value after a good run names its field and leaves the
    gallery, the table and the frontier as they were; the server logs one line for it, no traceback."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = page.driver
    box = driver.find_element(By.CSS_SELECTOR, "#model input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("no-such-model", Keys.ENTER, Keys.TAB)
    time.sleep(1.0)
    assert box.get_attribute("value") in page.state.choices
    assert not browser.error_messages(driver) and "Error" not in driver.find_element(By.ID, "fractions").text
    browser.set_fractions(driver, ["0.3"])
    browser.set_number(driver, "steps", "6")
    browser.set_number(driver, "images", "2")
    good = browser.generate(driver, expected_tiles=2)
    frontier = page.by_id("frontier").find_element(By.TAG_NAME, "img").get_attribute("src")
    caplog.set_level(logging.INFO, logger="tstitch.serve.app")
    for field, value, message in (("seed", "1e30", "seed must be a whole number in [0, 2**63 - 1], got 1e+30"),
                                  ("seed", "", "seed is empty"),
                                  ("labels", "99", "class labels must be in [0, 9] for these models, got [99]")):
        browser.close_errors(driver)
        browser.set_number(driver, field, value)
        shown = browser.press_until(driver, "generate", browser.error_messages, timeout=30)
        assert any(message in text for text in shown), shown
        assert browser.captions(driver) == good  # the previous results stay
        assert page.by_id("frontier").find_element(By.TAG_NAME, "img").get_attribute("src") == frontier
        assert "Error" not in page.by_id("gallery").text
        browser.set_number(driver, field, "0" if field == "seed" else "1 2")
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused: ")]
    assert len(refused) == 3
    assert "Traceback" not in capfd.readouterr().err
    browser.close_errors(driver)


def test_cancel_then_generate_and_an_uploaded_plan(page, tmp_path):
    """Cancel a 150-step request while it samples; the next 5-step request is done in 5 s on a quiet machine
    (scaled by the load of a shared one). Then a plan uploaded from a file is sampled as one more run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = page.driver
    browser.set_fractions(driver, ["0.3", "0.5"])
    browser.set_number(driver, "steps", "150")
    browser.set_number(driver, "images", "8")
    browser.press_until(driver, "generate", lambda d: "step " in browser.status(d), timeout=60)
    time.sleep(1.0)
    driver.find_element(By.ID, "cancel").click()
    browser.set_number(driver, "steps", "5")
    begin = time.monotonic()
    captions = browser.generate(driver, expected_tiles=3)
    took = time.monotonic() - begin
    limit = 5.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    assert took <= limit, f"the 5-step request after Cancel took {took:.1f} s (limit {limit:.1f} s)"
    assert [text.split(":")[0] for text in captions] == ["r 0 (digits-xl alone)", "r 0.3", "r 0.5"]
    plan = tmp_path / "tuned.json"
    plan.write_text(json.dumps({"version": 1, "num_models": 2, "sequence": [0, 0, 1, 1, 1]}))
    driver.find_element(By.CSS_SELECTOR, "#plan-box .label-wrap").click()
    upload = WebDriverWait(driver, 30, poll_frequency=0.2).until(  # the accordion draws its content when opened
        lambda d: d.find_elements(By.CSS_SELECTOR, "#plan-file input[type=file]"))
    upload[0].send_keys(str(plan))
    WebDriverWait(driver, 30, poll_frequency=0.2).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#plan-file td.filename[aria-label='tuned.json']"))
    captions = browser.generate(driver, expected_tiles=4)
    assert captions[3].startswith("plan digits-s2 > digits-xl3: "), captions

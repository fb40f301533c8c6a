# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Driving the ``tstitch serve`` page in headless Chromium with Selenium: the browser tests and
``make screenshot`` (``python -m tstitch.serve.browser docs/serve.png``) use these steps.

Chromium and its driver come from the system packages (Debian: ``chromium``, ``chromium-driver``); nothing
is downloaded at run time.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

__all__ = ["CHROMIUM", "CHROMEDRIVER", "missing_browser", "open_driver", "free_port", "load", "set_fractions",
           "set_number", "generate", "captions", "error_messages"]

CHROMIUM = os.environ.get("TSTITCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TSTITCH_CHROMEDRIVER", "/usr/bin/chromedriver")


def missing_browser() -> str | None:
    """Why the page cannot be driven here (a missing package or binary), or ``None``."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'tstitch[web]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found (apt-get install {package})"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def open_driver(width: int = 1400, height: int = 1500):
    """A headless Chromium driven through the system's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def load(driver, url: str, timeout: float = 30.0) -> None:
    """Open the page and wait until Gradio has rendered its controls."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#fractions label") and d.find_elements(By.ID, "generate"))


def set_fractions(driver, values: list[str]) -> None:
    """Tick exactly ``values`` in the fractions checkbox group."""
    from selenium.webdriver.common.by import By

    labels = driver.find_elements(By.CSS_SELECTOR, "#fractions label")
    offered = [label.find_element(By.TAG_NAME, "input").get_attribute("name") for label in labels]
    if not set(values) <= set(offered):
        raise ValueError(f"fractions {values} are not all offered; the page offers {offered}")
    for label in labels:
        box = label.find_element(By.TAG_NAME, "input")
        if box.is_selected() != (box.get_attribute("name") in values):
            label.click()


def set_number(driver, elem_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.TAB)


def _texts(driver, selector: str, tries: int = 20) -> list[str]:
    """The texts of the elements matching ``selector``, read again when the page replaces them meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(tries - 1):
        try:
            return [element.text for element in driver.find_elements(By.CSS_SELECTOR, selector)]
        except StaleElementReferenceException:
            continue
    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, selector)]


def captions(driver) -> list[str]:
    return _texts(driver, "#gallery .caption-label")


def error_messages(driver) -> list[str]:
    return [text for text in _texts(driver, "[data-testid='toast-text']") if text]  # empty while it slides in


def generate(driver, expected_tiles: int, timeout: float = 60.0) -> list[str]:
    """Press Generate and wait until the gallery shows ``expected_tiles`` new captions (returned)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = captions(driver)
    driver.find_element(By.ID, "generate").click()

    def finished(d):
        now = captions(d)
        done = len(now) == expected_tiles and now != before and not d.find_elements(
            By.CSS_SELECTOR, "#gallery .progress-text, #gallery .eta-bar")
        return now if done else False

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(finished)


def main(argv: list[str] | None = None) -> int:
    """Serve the digits page, generate three fractions and save a screenshot of the page (``make screenshot``)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", help="the PNG to write (refused if it exists, unless --force)")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    parser.add_argument("--frontier", help="the frontier file to show (default: the page's search)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists: pass --force to replace it")
    reason = missing_browser()
    if reason:
        raise SystemExit(f"cannot take the screenshot: {reason}")
    from ..utils import atomic_write
    from .app import make_state, start, use_one_thread_for_tiny_models

    state, default = make_state(frontier=args.frontier)
    use_one_thread_for_tiny_models(state, default)
    app, url = start(state, default, port=free_port())
    driver = open_driver(height=1900)
    try:
        load(driver, url)
        set_fractions(driver, ["0.3", "0.5", "0.7"])
        set_number(driver, "steps", "20")
        generate(driver, expected_tiles=4)
        driver.execute_script("window.scrollTo(0, 0)")
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        app.close()
    atomic_write(out, lambda tmp: tmp.write_bytes(png))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    raise SystemExit(main())

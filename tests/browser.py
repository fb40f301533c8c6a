# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Driving the ``tstitch serve`` page in headless Chromium with Selenium: the browser tests and
``make screenshot`` (``python tests/browser.py``) use these steps.

Chromium and its driver come from the system packages (Debian: ``chromium``, ``chromium-driver``); nothing
is downloaded at run time. chromedriver starts through :mod:`processes`' rules: a session of its own, SIGINT
at its default, and its whole tree killed and reaped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # processes.py, when run as a script

import processes  # noqa: E402

__all__ = ["CHROMIUM", "CHROMEDRIVER", "DESKTOP", "PHONE", "missing_browser", "driver", "free_port", "load",
           "set_fractions", "set_number", "generate", "captions", "error_messages", "boxes", "inner_scroll"]

CHROMIUM = os.environ.get("TSTITCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TSTITCH_CHROMEDRIVER", "/usr/bin/chromedriver")
#: The window sizes the layout is checked at (and the screenshots taken at).
DESKTOP = (1400, 1000)
PHONE = (400, 850)


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


@contextlib.contextmanager
def driver(width: int, height: int) -> Iterator[Any]:
    """A headless Chromium of ``width`` x ``height`` CSS pixels through the system's chromedriver; quit, and
    chromedriver's tree killed and reaped, on the way out. Its profile and temporary files live in a folder
    removed afterwards (Chromium leaves a folder in the system's temporary folder otherwise)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="tstitch-chromium-") as folder:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
                         f"--user-data-dir={folder}/profile"):
            options.add_argument(argument)
        service = Service(CHROMEDRIVER, env=dict(os.environ, TMPDIR=folder),
                          popen_kw={"start_new_session": True, "preexec_fn": processes.default_sigint})
        browser = webdriver.Chrome(service=service, options=options)
        try:
            yield browser
        finally:
            try:
                browser.quit()
            finally:
                if service.process is not None:
                    processes.kill_tree(service.process)


def resize(browser: Any, width: int, height: int) -> None:
    """The viewport (not the window) set to ``width`` x ``height``."""
    browser.set_window_size(width, height)
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    browser.set_window_size(2 * width - inner[0], 2 * height - inner[1])


def load(browser: Any, url: str, timeout: float = 30.0) -> None:
    """Open the page and wait until Gradio has rendered its controls."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, timeout, poll_frequency=0.2).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#fractions label") and d.find_elements(By.ID, "generate"))


def set_fractions(browser: Any, values: list[str]) -> None:
    """Tick exactly ``values`` in the fractions checkbox group."""
    from selenium.webdriver.common.by import By

    labels = browser.find_elements(By.CSS_SELECTOR, "#fractions label")
    offered = [label.find_element(By.TAG_NAME, "input").get_attribute("name") for label in labels]
    if not set(values) <= set(offered):
        raise ValueError(f"fractions {values} are not all offered; the page offers {offered}")
    for label in labels:
        box = label.find_element(By.TAG_NAME, "input")
        if box.is_selected() != (box.get_attribute("name") in values):
            label.click()


def set_number(browser: Any, elem_id: str, value: str) -> None:
    """Type ``value`` into the field ``elem_id`` (a number or a text box) and leave it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    if value:
        field.send_keys(value)
    field.send_keys(Keys.TAB)


def _texts(browser: Any, selector: str, tries: int = 20) -> list[str]:
    """The texts of the elements matching ``selector``, read again when the page replaces them meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(tries - 1):
        try:
            return [element.text for element in browser.find_elements(By.CSS_SELECTOR, selector)]
        except StaleElementReferenceException:
            continue
    return [element.text for element in browser.find_elements(By.CSS_SELECTOR, selector)]


def captions(browser: Any) -> list[str]:
    return _texts(browser, "#gallery .caption-label")


def status(browser: Any) -> str:
    return " ".join(_texts(browser, "#status"))


def error_messages(browser: Any) -> list[str]:
    return [text for text in _texts(browser, "[data-testid='toast-text']") if text]  # empty while it slides in


def close_errors(browser: Any, timeout: float = 30.0) -> None:
    """Close the error toasts and wait until they are gone, so that the next error is the only one shown."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for button in browser.find_elements(By.CSS_SELECTOR, "[data-testid='toast-close']"):
        with contextlib.suppress(WebDriverException):
            button.click()
    WebDriverWait(browser, timeout, poll_frequency=0.2).until(lambda d: not error_messages(d))


def press_until(browser: Any, elem_id: str, condition: Callable[[Any], Any], timeout: float = 90.0,
                every: float = 3.0) -> Any:
    """Click ``elem_id`` and wait for ``condition``; click again every ``every`` seconds while it does not hold.

    Gradio drops a click on a button whose previous event has not completed yet (``trigger_mode="once"``), and
    under load that completion can reach the page seconds after the last output: a click in that gap does
    nothing. A click while this request's own event is pending is dropped the same way, so clicking again never
    starts a second request."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    end = time.monotonic() + timeout
    while True:
        browser.find_element(By.ID, elem_id).click()
        wait = max(0.1, min(every, end - time.monotonic()))
        try:
            return WebDriverWait(browser, wait, poll_frequency=0.2).until(condition)
        except TimeoutException:
            if time.monotonic() >= end:
                raise


def generate(browser: Any, expected_tiles: int, timeout: float = 90.0) -> list[str]:
    """Press Generate and wait until the request is done (the progress line says so) with ``expected_tiles``
    tiles whose captions are the final ones (the page may draw the progress line before the gallery's last
    update); returns their captions."""
    from selenium.webdriver.support.ui import WebDriverWait

    before = status(browser)

    def finished(d: Any) -> list[str] | bool:
        now, line = captions(d), status(d)
        final = len(now) == expected_tiles and not any("(first repetition)" in text for text in now)
        return now if line.startswith("done:") and line != before and final else False

    def started(d: Any) -> bool:
        return status(d) != before

    press_until(browser, "generate", started, timeout=timeout)
    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(finished)


#: Reads the bounding boxes of the elements the layout tests check (CSS pixels, relative to the viewport).
_BOXES = """
const box = (element) => { const r = element.getBoundingClientRect();
  return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height}; };
return Object.fromEntries(Object.entries(arguments[0]).map(([name, selector]) =>
  [name, Array.from(document.querySelectorAll(selector)).map(box)]));
"""


def boxes(browser: Any, selectors: dict[str, str]) -> dict[str, list[dict[str, float]]]:
    """The bounding boxes of the elements of each selector, by name."""
    return browser.execute_script(_BOXES, selectors)


def inner_scroll(browser: Any, selector: str) -> list[tuple[int, int]]:
    """``(scrollHeight, clientHeight)`` of ``selector`` and every element inside it that scrolls vertically."""
    return browser.execute_script("""
      const root = document.querySelector(arguments[0]); if (!root) return [];
      return [root, ...root.querySelectorAll('*')].filter(e => {
        const style = getComputedStyle(e);
        return ['auto', 'scroll'].includes(style.overflowY) && e.scrollHeight > e.clientHeight + 1;
      }).map(e => [e.scrollHeight, e.clientHeight]);""", selector)


def page_width(browser: Any) -> tuple[int, int]:
    """``(document width, viewport width)``: a page wider than its viewport is cut off on the right."""
    return tuple(browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"))


def main(argv: list[str] | None = None) -> int:
    """Serve the digits page, generate three fractions and save screenshots of the page at desktop and phone
    size (``make screenshot``)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("desktop", help=f"the PNG of the page at {DESKTOP[0]}x{DESKTOP[1]}")
    parser.add_argument("phone", help=f"the PNG of the page at {PHONE[0]}x{PHONE[1]}")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.add_argument("--frontier", help="the frontier file to show (default: the page's search)")
    args = parser.parse_args(argv)
    outs = [Path(args.desktop), Path(args.phone)]
    for out in outs:
        if out.exists() and not args.force:
            raise SystemExit(f"{out} exists: pass --force to replace it")
    reason = missing_browser()
    if reason:
        raise SystemExit(f"cannot take the screenshots: {reason}")
    from tstitch.serve.app import make_state, start, use_one_thread_for_tiny_models
    from tstitch.utils import atomic_write

    state, default = make_state(frontier=args.frontier)
    use_one_thread_for_tiny_models(state, default)
    app, url = start(state, default, port=free_port())
    shots = []
    try:
        with driver(*DESKTOP) as browser:
            resize(browser, *DESKTOP)
            load(browser, url)
            set_fractions(browser, ["0.3", "0.5", "0.7"])
            set_number(browser, "steps", "20")
            generate(browser, expected_tiles=4)
            for width, height in (DESKTOP, PHONE):  # the whole page, at each width
                resize(browser, width, height)
                full = browser.execute_script("return document.documentElement.scrollHeight")
                browser.set_window_size(width, full + 200)
                resize(browser, width, full)
                browser.execute_script("window.scrollTo(0, 0)")
                shots.append(browser.get_screenshot_as_png())
    finally:
        app.close()
    for out, png in zip(outs, shots, strict=True):
        atomic_write(out, lambda tmp, data=png: tmp.write_bytes(data))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    raise SystemExit(main())

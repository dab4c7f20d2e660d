"""Driving the playground in a real headless browser: Debian's chromium and chromedriver
(``apt-get install -y chromium chromium-driver``) through Selenium. Used by the browser test
and by the screenshot script; :func:`browser_missing` says why there is no browser."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _first(names) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def browser_missing() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if _first(BROWSERS) is None or _first(DRIVERS) is None:
        return "chromium or chromedriver is absent (apt-get install -y chromium chromium-driver)"
    return None


@contextmanager
def headless_chromium(width: int = 1280, height: int = 820):
    """A Selenium driver of headless chromium, closed when the block ends."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--disable-extensions", "--no-first-run",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.binary_location = _first(BROWSERS)
    driver = webdriver.Chrome(options=options, service=Service(_first(DRIVERS)))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_state(driver, *states: str, seconds: float = 30.0) -> str:
    """Wait until the page's ``body[data-state]`` is one of ``states``; return it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in states)
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def fill_and_generate(driver, prompt: str, *, length: int, greedy: bool = False,
                      temperature: float | None = None, colour: bool = False) -> None:
    """Type ``prompt``, set the controls and press Generate."""
    from selenium.webdriver.common.by import By

    find = driver.find_element
    find(By.ID, "prompt").clear()
    find(By.ID, "prompt").send_keys(prompt)
    find(By.ID, "length").clear()
    find(By.ID, "length").send_keys(str(length))
    if find(By.ID, "greedy").is_selected() != greedy:
        find(By.ID, "greedy").click()
    if temperature is not None:
        driver.execute_script("const t = document.getElementById('temperature');"
                              "t.value = arguments[0]; t.dispatchEvent(new Event('input'));",
                              temperature)
    if find(By.ID, "colour").is_selected() != colour:
        find(By.ID, "colour").click()
    find(By.ID, "generate").click()

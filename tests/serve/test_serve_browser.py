"""The playground in a real headless browser (chromium via Selenium) against a real server:
a prompt goes in, the text streams out token by token (seen while the generation is still
running), the next-token distribution is drawn, and the colouring by a unit is the
diagnostics' own. Skips cleanly when chromium or chromedriver is absent."""

from __future__ import annotations

import re
import threading

import httpx
import pytest

from browser import browser_missing, fill_and_generate, headless_chromium, wait_for_state
from rnnkit.serve import inference, running_server
from rnnkit.tasks import lm
from serve_helpers import served_app, trained_models

pytestmark = pytest.mark.skipif(browser_missing() is not None,
                                reason=str(browser_missing()))


def _js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def _normal(colour: str) -> str:
    return re.sub(r"\s+", "", colour)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(driver on the playground, server URL, model directories)."""
    dirs, _ = trained_models(tmp_path_factory)
    app = served_app(tmp_path_factory, ["charlm", "wordlm", "classifier"])
    with running_server(app) as url, headless_chromium() as driver:
        driver.get(url + "/")
        wait_for_state(driver, "ready")
        yield driver, url, dirs


def test_the_page_lists_the_language_models(page):
    driver, _, _ = page
    options = _js(driver, "return Array.from(document.getElementById('model').options)"
                          ".map(o => o.value)")
    assert options == ["charlm", "wordlm"]                   # not the classifier


def test_a_prompt_streams_text_and_its_distributions(page, monkeypatch, tmp_path):
    driver, url, dirs = page
    reached, release = threading.Event(), threading.Event()
    original, calls = inference.distribution, []

    def held(*args, **kwargs):                 # the 6th token waits until the test looks
        calls.append(1)
        if len(calls) == 6:
            reached.set()
            release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "distribution", held)
    try:
        fill_and_generate(driver, "the cat", length=40, greedy=True)
        assert reached.wait(30)
        # mid-generation (the 6th token is held): the first ones reach the page, with their
        # distribution
        from selenium.webdriver.support.ui import WebDriverWait

        def output():
            return _js(driver, "return document.getElementById('output').textContent")

        WebDriverWait(driver, 20).until(lambda d: len(output()) > len("the cat") and len(
            _js(d, "return document.querySelectorAll('#bars li')")) == 10)
        assert _js(driver, "return document.body.dataset.state") == "generating"
        shown = output()
        expected = lm.generate(dirs["charlm"], "the cat", max_tokens=40, greedy=True)
        assert shown.startswith("the cat") and len(shown) <= len("the cat") + 5
        assert expected.startswith(shown[len("the cat"):])
    finally:
        release.set()
    assert wait_for_state(driver, "done", "failed") == "done"
    shown = _js(driver, "return document.getElementById('output').textContent")
    assert shown == "the cat" + expected
    status = _js(driver, "return document.getElementById('status').textContent")
    assert status == "done: 40 tokens"
    # the bars are the last step's distribution, as the API streams it
    r = httpx.post(f"{url}/generate", json={"model": "charlm", "prime": "the cat",
                                            "length": 40, "greedy": True}, timeout=30)
    last = [e for e in map(__import__("json").loads, r.text.splitlines())
            if e["event"] == "token"][-1]
    widths = _js(driver, "return Array.from(document.querySelectorAll('#bars .pct'))"
                         ".map(e => e.textContent)")
    assert widths == [f"{100 * t['p_sample']:.1f}%" for t in last["top"]]
    assert "step 40" in _js(driver, "return document.getElementById('dist-step').textContent")
    # hovering a generated character shows its own step
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    span = driver.find_elements(By.CSS_SELECTOR, "#output .gen")[4]
    ActionChains(driver).move_to_element(span).perform()
    step = span.get_attribute("data-step")
    assert f"step {step}:" in _js(driver, "return document.getElementById('dist-step')"
                                          ".textContent")
    driver.save_screenshot(str(tmp_path / "playground.png"))


def test_colouring_is_the_activation_view_of_the_text(page):
    driver, url, _ = page
    fill_and_generate(driver, "a dog", length=20, temperature=0.8, colour=True)
    assert wait_for_state(driver, "done", "failed") == "done"
    _js(driver, "const u = document.getElementById('unit'); u.value = 5;"
                "u.dispatchEvent(new Event('input'));")
    text = _js(driver, "return document.getElementById('output').textContent")
    view = httpx.post(f"{url}/activations", json={"model": "charlm", "text": text,
                                                  "unit": 5}, timeout=30).json()

    def coloured():
        got = _js(driver, "return Array.from(document.querySelectorAll('#output span'))"
                          ".map(s => s.style.background)")
        return [_normal(c) for c in got] == [_normal(c) for c in view["colours"]]

    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(lambda d: coloured())
    assert "hidden unit 5 of layer 1" in _js(
        driver, "return document.getElementById('colour-note').textContent")


def test_a_word_model_streams_but_cannot_be_coloured(page):
    driver, _, dirs = page
    from selenium.webdriver.support.ui import Select
    from selenium.webdriver.common.by import By

    Select(driver.find_element(By.ID, "model")).select_by_value("wordlm")
    assert _js(driver, "return document.getElementById('colouring').disabled") is True
    fill_and_generate(driver, "the cat", length=6, greedy=True)
    assert wait_for_state(driver, "done", "failed") == "done"
    expected = lm.generate(dirs["wordlm"], "the cat", max_tokens=6, greedy=True)
    assert _js(driver, "return document.getElementById('output').textContent") == \
        "the cat" + expected
    Select(driver.find_element(By.ID, "model")).select_by_value("charlm")


def test_an_error_is_shown_not_thrown(page):
    driver, _, _ = page
    fill_and_generate(driver, "QQQ", length=5)          # characters the model never saw
    assert wait_for_state(driver, "failed", "done") == "failed"
    status = _js(driver, "return document.getElementById('status').textContent")
    assert status == "prime: 1 character(s) not in the vocabulary: 'Q'"

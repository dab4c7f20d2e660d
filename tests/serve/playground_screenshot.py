"""Draw docs/playground.png: the playground in headless chromium, a character model writing
Python, coloured by the unit that best follows "inside brackets".

    python tests/serve/playground_screenshot.py                     # trains a small model first
    python tests/serve/playground_screenshot.py --model runs/lm --out docs/playground.png

Without ``--model`` it trains a character LSTM on the standard-library corpus for
``--minutes`` (the out-of-the-box ``rnnkit train lm`` with a time budget), in a temporary
folder. Needs chromium and chromedriver (``apt-get install -y chromium chromium-driver``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from browser import browser_missing, fill_and_generate, headless_chromium, wait_for_state  # noqa: E402


def best_unit(model_dir: str, text: str, feature: str = "inside brackets") -> tuple[int, int]:
    """(layer, unit) whose hidden activation correlates most with ``feature`` on ``text``
    (the ranking of ``rnnkit activations``)."""
    from rnnkit.diagnostics.activations import activations, feature_correlations
    from rnnkit.tasks.lm import load_lm

    model, tokenizer, _ = load_lm(model_dir)
    ids = tokenizer.encode(text, unknown_policy="unk")
    best = (0, 0, 0.0)
    for layer in range(len(model.layers)):
        unit, r = feature_correlations(text, activations(model, ids, layer=layer))[feature][0]
        if abs(r) > abs(best[2]):
            best = (layer, unit, r)
    return best[0], best[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a character language model directory")
    parser.add_argument("--out", default=str(HERE.parents[1] / "docs" / "playground.png"))
    parser.add_argument("--minutes", type=float, default=1.5, help="training budget")
    parser.add_argument("--prompt", default="def __init__(self, ")
    args = parser.parse_args(argv)
    missing = browser_missing()
    if missing:
        print(f"no browser: {missing}", file=sys.stderr)
        return 2
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from rnnkit.serve import ServeLimits, create_app, load_models, running_server
    from rnnkit.tasks import lm

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = str(Path(tmp) / "python-lm")
            lm.train_lm(lm.LMDataConfig(level="char"), {"hidden_size": 128, "num_layers": 2},
                        {"max_minutes": args.minutes, "eval_every": 1000}, model_dir,
                        sample_chars=0)
        app = create_app(load_models([f"python={model_dir}"]), ServeLimits())
        with running_server(app) as url, headless_chromium(1280, 760) as driver:
            driver.get(url + "/")
            wait_for_state(driver, "ready")
            fill_and_generate(driver, args.prompt, length=320, temperature=0.7, colour=False)
            wait_for_state(driver, "done", "failed", seconds=120)
            text = driver.execute_script(
                "return document.getElementById('output').textContent")
            layer, unit = best_unit(model_dir, text)
            driver.find_element(By.ID, "colour").click()
            Select(driver.find_element(By.ID, "layer")).select_by_value(str(layer))
            driver.execute_script("const u = document.getElementById('unit'); u.value = "
                                  "arguments[0]; u.dispatchEvent(new Event('input'));", unit)
            time.sleep(1.5)
            spans = driver.find_elements(By.CSS_SELECTOR, "#output .gen")
            ActionChains(driver).move_to_element(spans[len(spans) // 3]).click().perform()
            time.sleep(0.5)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
    print(f"wrote {args.out} (hidden unit {unit} of layer {layer})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

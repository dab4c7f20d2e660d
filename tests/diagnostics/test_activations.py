"""Activation pictures: the numbers are the model's, the page is self-contained and renders."""

import shutil
import subprocess

import pytest
import torch

from rnnkit.data import build_tokenizer
from rnnkit.diagnostics.activations import (activation_html, activations, feature_correlations,
                                            text_features, write_activation_page)
from rnnkit.models.lm import LanguageModel, LMConfig

TEXT = 'print("hi", (1, 2))\nx = [a]\n'


@pytest.fixture
def char_model():
    tok = build_tokenizer("char", TEXT.splitlines())
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=tok.vocab_size, hidden_size=6, num_layers=2))
    return model.eval(), tok


def test_hidden_and_cell_activations_are_the_layers_states(char_model):
    model, tok = char_model
    ids = tok.encode(TEXT)
    with torch.no_grad():
        hidden, _ = model(torch.tensor(ids)[:, None])
    torch.testing.assert_close(activations(model, ids, layer=-1), hidden[:, 0])
    # the cell state of layer 0, recomputed with torch.nn.LSTMCell
    layer = model.layers[0]
    ref = torch.nn.LSTMCell(6, 6)
    ref.load_state_dict({k.replace("_l0", ""): v for k, v in layer.state_dict().items()})
    h = c = torch.zeros(1, 6)
    cells = []
    with torch.no_grad():
        for x in model.embedding(torch.tensor(ids)):
            h, c = ref(x[None], (h, c))
            cells.append(c[0])
    torch.testing.assert_close(activations(model, ids, layer=0, kind="cell"), torch.stack(cells))
    forget = activations(model, ids, layer=0, kind="forget")
    assert forget.shape == (len(ids), 6) and bool(((forget > 0) & (forget < 1)).all())
    with pytest.raises(ValueError, match="no 'reset' gate"):
        activations(model, ids, kind="reset")
    with pytest.raises(ValueError, match="layer"):
        activations(model, ids, layer=5)


def test_text_features_by_hand():
    f = text_features('a("b")\nc')
    assert f["position in line"].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]
    assert f["inside quotes"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert f["inside brackets"].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]


def test_correlations_find_a_planted_unit():
    text = TEXT * 3
    acts = torch.randn(len(text), 5) * 0.01
    acts[:, 3] = text_features(text)["position in line"].float()
    assert feature_correlations(text, acts)["position in line"][0][0] == 3
    assert feature_correlations(text, acts)["position in line"][0][1] == pytest.approx(1.0)


def test_page_is_self_contained_and_says_when_cut(char_model, tmp_path):
    model, tok = char_model
    page_path = tmp_path / "page.html"
    shown = write_activation_page(model, tok, TEXT * 10, page_path, unit=2, max_chars=30)
    page = page_path.read_text(encoding="utf-8")
    assert shown["truncated"] and "the first 30" in page
    assert page.count("<span style=\"background:rgb(") == 30 + 2     # characters + legend
    assert "&quot;" in page and "<script" not in page and "http" not in page
    assert "src=" not in page and "<link" not in page
    with pytest.raises(ValueError, match="unit: expected 0..5"):
        write_activation_page(model, tok, TEXT, page_path, unit=6)


def test_values_map_to_colours():
    page = activation_html("ab", torch.tensor([-1.0, 1.0]), title="t")
    assert "rgb(0,0,255)" in page and "rgb(255,0,0)" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed")
def test_page_renders_in_a_real_browser(char_model, tmp_path):
    model, tok = char_model
    write_activation_page(model, tok, TEXT, tmp_path / "page.html", unit=1)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", (tmp_path / "page.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<span") == len(TEXT) + 2
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=800,400",
                    (tmp_path / "page.html").as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Every endpoint of ``rnnkit serve`` in normal use, its answers compared with the library's
own functions on the same model: /score with ``lm.score_lines``, /generate with
``lm.generate`` (greedy, seeded sampling, beam, conditioned), /classify with
``classifier.predict_file``, /tag with ``tagger.predict_file``, /translate with
``translator.translate_lines``, /activations with ``diagnostics.activations``."""

from __future__ import annotations

import math

import pytest
import torch
from fastapi.testclient import TestClient

from rnnkit.diagnostics.activations import activations, colour
from rnnkit.generate import filter_logits
from rnnkit.tasks import classifier, conditioned_lm, lm, tagger, translator
from serve_helpers import events_of, served_app, streamed_text, trained_models

LINES = ["the cat sat", "a dog ran on a mat", "the", "", "cat zebra on the mat"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return trained_models(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(served_app(tmp_path_factory)) as c:
        yield c


def _generate(client, **body) -> list[dict]:
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return events_of(r.text)


def test_health_and_models_describe_the_loaded_models(client, dirs):
    assert client.get("/health").json()["status"] == "ok"
    listed = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert sorted(listed) == sorted(dirs)
    model, tokenizer, _ = lm.load_lm(dirs["charlm"])
    char = listed["charlm"]
    assert char["task"] == "lm" and char["cell"] == model.config.cell == "lstm"
    assert char["sizes"]["hidden_size"] == model.config.hidden_size
    assert char["sizes"]["num_layers"] == model.config.num_layers
    assert char["sizes"]["vocab_size"] == tokenizer.vocab_size
    assert char["sizes"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert char["level"] == "char"
    assert char["activation_kinds"] == ["hidden", "cell", "input", "forget", "output"]
    assert listed["wordlm"]["activation_kinds"] == ["hidden", "reset", "update"]
    assert listed["classifier"]["labels"] == ["0", "1"]
    assert listed["translator"]["endpoints"] == ["translate"]
    assert listed["clm"]["task"] == "conditioned_lm"


@pytest.mark.parametrize("name", ["charlm", "wordlm"])
def test_score_equals_score_lines(client, dirs, tmp_path, name):
    path = tmp_path / "lines.txt"
    path.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    expected = lm.score_lines(dirs[name], path)
    got = client.post("/score", json={"model": name, "lines": LINES}).json()
    assert got["model"] == name
    rows = got["scores"]
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    if name == "wordlm":                           # "zebra" is not in the vocabulary
        assert [r["unknown"] for r in rows] == [0, 0, 0, 0, 1]


def test_greedy_generation_equals_lm_generate(client, dirs):
    expected = lm.generate(dirs["charlm"], "the ca", max_tokens=30, greedy=True)
    events = _generate(client, model="charlm", prime="the ca", length=30, greedy=True)
    tokens = [e for e in events if e["event"] == "token"]
    assert streamed_text(events) == expected
    assert events[-1] == {"event": "done", "model": "charlm", "text": expected, "tokens": 30}
    assert [e["index"] for e in tokens] == list(range(1, 31))
    # each step's distribution is the model's own after the prompt and the tokens so far
    model, tokenizer, _ = lm.load_lm(dirs["charlm"])
    prefix = tokenizer.encode("the ca")
    for e in tokens[:5] + tokens[-2:]:
        ids = prefix + [t["id"] for t in tokens[:e["index"] - 1]]
        log_probs, _ = model.prime(torch.tensor(ids)[:, None], model.initial_state(1))
        probs = log_probs[0].double().exp()
        top = probs.topk(10)
        assert [t["id"] for t in e["top"]] == top.indices.tolist()
        assert [t["p"] for t in e["top"]] == pytest.approx(top.values.tolist(), rel=1e-5)
        assert e["id"] == int(log_probs[0].argmax()) and e["p_sample"] == 1.0
        assert e["token"] == tokenizer.token(e["id"])


@pytest.mark.parametrize("options", [{"temperature": 0.7, "seed": 3},
                                     {"top_k": 4, "seed": 11},
                                     {"top_p": 0.5, "temperature": 1.3, "seed": 5}])
def test_seeded_sampling_equals_lm_generate(client, dirs, options):
    expected = lm.generate(dirs["charlm"], "the", max_tokens=25, **options)
    events = _generate(client, model="charlm", prime="the", length=25, top=16, **options)
    assert streamed_text(events) == expected == events[-1]["text"]
    sampling = {k: v for k, v in options.items() if k != "seed"}
    for e in [e for e in events if e["event"] == "token"][:3]:
        p = torch.tensor([t["p"] for t in sorted(e["top"], key=lambda t: t["id"])])
        want = filter_logits(p.log()[None], **sampling)[0].exp()       # all 16 tokens shown
        got = [t["p_sample"] for t in sorted(e["top"], key=lambda t: t["id"])]
        assert got == pytest.approx(want.tolist(), abs=1e-6)


def test_word_model_generation_and_beam_equal_lm_generate(client, dirs):
    expected = lm.generate(dirs["wordlm"], "the cat", max_tokens=8, seed=2)
    events = _generate(client, model="wordlm", prime="the cat", length=8, seed=2)
    assert streamed_text(events) == expected
    beam = lm.generate(dirs["wordlm"], "the cat", max_tokens=6, beam=3)
    events = _generate(client, model="wordlm", prime="the cat", length=6, beam=3)
    assert streamed_text(events) == beam == events[-1]["text"]
    assert not [e for e in events if e["event"] == "token"]


def test_empty_prime_starts_a_line_as_lm_generate_does(client, dirs):
    expected = lm.generate(dirs["charlm"], "", max_tokens=12, greedy=True)
    assert streamed_text(_generate(client, model="charlm", length=12, greedy=True)) == expected


def test_zero_length_generation_is_just_done(client):
    events = _generate(client, model="charlm", prime="a", length=0)
    assert events == [{"event": "done", "model": "charlm", "text": "", "tokens": 0}]


def test_conditioned_generation_equals_conditioned_lm_generate(client, dirs):
    expected = conditioned_lm.generate(dirs["clm"], "1", "the", max_tokens=10, seed=4)
    events = _generate(client, model="clm", prime="the", condition="1", length=10, seed=4)
    assert streamed_text(events) == expected


def test_classify_equals_predict_file(client, dirs, tmp_path):
    texts = ["the cat sat", "a dog ran", "mat mat on zebra"]
    path = tmp_path / "texts.txt"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    expected = classifier.predict_file(dirs["classifier"], path)
    got = client.post("/classify", json={"texts": texts}).json()["predictions"]
    assert got == [{k: v for k, v in row.items() if k != "line"} for row in expected]


def test_tag_equals_predict_file(client, dirs, tmp_path):
    sentences = [["the", "cat", "sat"], ["a", "zebra"], ["on", "the", "mat", "mat"]]
    path = tmp_path / "words.tsv"
    path.write_text("".join("".join(f"{w}\n" for w in s) + "\n" for s in sentences),
                    encoding="utf-8")
    text = tagger.predict_file(dirs["tagger"], path)
    expected = [[line.split("\t")[1] for line in block.splitlines()]
                for block in text.strip().split("\n\n")]
    body = {"sentences": [sentences[0], " ".join(sentences[1]), sentences[2]]}
    got = client.post("/tag", json=body).json()["sentences"]
    assert [r["tags"] for r in got] == expected
    assert [r["words"] for r in got] == sentences


@pytest.mark.parametrize("beam", [1, 3])
def test_translate_equals_translate_lines(client, dirs, beam):
    texts = ["the cat sat", "a dog ran on a mat"]
    expected = translator.translate_lines(dirs["translator"], texts, beam=beam)
    got = client.post("/translate", json={"texts": texts, "beam": beam}).json()
    assert got["translations"] == expected


@pytest.mark.parametrize("kind, layer, unit", [("hidden", -1, 3), ("cell", 0, 0),
                                               ("forget", 1, 15)])
def test_activations_equal_the_diagnostics(client, dirs, kind, layer, unit):
    text = "the cat sat\non a mat"
    view = client.post("/activations", json={"model": "charlm", "text": text, "kind": kind,
                                             "layer": layer, "unit": unit}).json()
    model, tokenizer, _ = lm.load_lm(dirs["charlm"])
    acts = activations(model, tokenizer.encode(text), layer=layer, kind=kind)[:, unit]
    assert view["text"] == text and view["units"] == 16 and view["layers"] == 2
    assert view["values"] == pytest.approx(acts.tolist(), abs=1e-6)
    scale = float(acts.abs().max())
    assert view["colours"] == [colour(v, scale) for v in view["values"]]
    assert view["layer"] == layer % 2 and not view["truncated"]


def test_activations_leave_the_served_model_on_its_engine(client, tmp_path_factory):
    app = served_app(tmp_path_factory, ["charlm"])
    entry = app.app.state.models["charlm"]
    backends = [layer.backend for layer in entry.model.layers]
    with TestClient(app) as c:
        assert c.post("/activations", json={"text": "the cat"}).status_code == 200
    assert [layer.backend for layer in entry.model.layers] == backends
    assert entry.activation_model is not entry.model


def test_activations_cut_a_long_text_and_say_so(client):
    from rnnkit.diagnostics.activations import MAX_CHARS

    view = client.post("/activations", json={"model": "charlm",
                                             "text": "ab " * (MAX_CHARS // 2)}).json()
    assert view["truncated"] and len(view["values"]) == MAX_CHARS and view["note"]


def test_the_playground_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/playground.js", "/static/playground.css"):
        assert client.get(asset).status_code == 200
        assert asset in page.text
    assert "http://" not in page.text and "https://" not in page.text          # no CDN
    assert "https://" not in client.get("/static/playground.js").text


def test_one_model_is_the_default(tmp_path_factory, dirs):
    with TestClient(served_app(tmp_path_factory, ["charlm", "classifier"])) as c:
        got = c.post("/score", json={"lines": ["the cat"]}).json()
        assert got["model"] == "charlm" and math.isfinite(got["scores"][0]["logprob"])
        assert c.post("/classify", json={"texts": ["the cat"]}).json()["model"] == "classifier"


def test_answers_are_strict_json():
    from rnnkit.serve.app import json_bytes

    assert json_bytes({"ppl": float("inf"), "x": [float("nan"), -float("inf"), 1.5], "t": "é"}) \
        == '{"ppl": "inf", "x": ["nan", "-inf", 1.5], "t": "é"}'.encode()


def test_score_reads_long_lines_in_windows_as_score_lines_does(client, dirs, tmp_path,
                                                               monkeypatch):
    from rnnkit.tasks import common

    lines = ["the cat sat on the mat " * 5, "a dog", "on a mat " * 9]
    path = tmp_path / "long.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    whole = lm.score_lines(dirs["charlm"], path, batch_size=1)     # each line read whole
    vocab = lm.load_lm(dirs["charlm"])[0].config.vocab_size
    monkeypatch.setattr(common, "BATCH_LOGITS", 7 * vocab)          # windows of 7 tokens
    rows = client.post("/score", json={"model": "charlm", "lines": lines}).json()["scores"]
    assert [r["tokens"] for r in rows] == [len(line) + 1 for line in lines]
    assert [r["text"] for r in rows] == lines
    assert [r["logprob"] for r in rows] == pytest.approx([r["logprob"] for r in whole],
                                                         rel=1e-6)

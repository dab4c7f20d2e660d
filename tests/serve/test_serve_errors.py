"""Bad requests get a 4xx JSON answer ``{"error": "FIELD: …"}`` naming what was wrong, never
a traceback, and the server stays healthy; an unexpected failure is a 500 with a generic
message (the traceback goes to the server's log); ``rnnkit serve`` refuses a port in use, a
directory that is not a model and a bad limit with one ``rnnkit: error:`` line."""

from __future__ import annotations

import logging
import socket

import pytest
from fastapi.testclient import TestClient

from rnnkit.config import MAX_INPUT_CHARS
from rnnkit.serve import inference
from conftest import expect_cli_error
from serve_helpers import served_app, trained_models

BIG = 3 * 1024 * 1024            # above the default body limit (2 MiB)

# (endpoint, body: a dict sent as JSON, or str/bytes sent raw, expected status, the
#  fragment the message must hold: the field it names)
CASES = [
    ("/score", "{", 400, "body: not valid JSON"),
    ("/score", "[" * 100_000, 400, "body: JSON nested too deeply"),
    ("/generate", {"model": "charlm", "prime": "zq\u00ff", "beam": 2}, 400, "prime:"),
    ("/score", b"", 400, "body: expected a JSON object"),
    ("/score", "[1, 2]", 400, "body: expected a JSON object, got list"),
    ("/score", '"lines"', 400, "body: expected a JSON object, got str"),
    ("/score", b"\xff\xfe{}", 400, "body: not valid JSON"),
    ("/score", {}, 400, "lines: required"),
    ("/score", {"lines": "the cat"}, 400, "lines: input should be a valid list"),
    ("/score", {"lines": ["the", 3]}, 400, "lines[1]: input should be a valid string"),
    ("/score", {"model": "charlm", "lines": []}, 400, "lines: expected at least one entry"),
    ("/score", {"model": "charlm", "lines": ["the\ncat"]}, 400, "lines[0]: holds a line break"),
    ("/score", {"model": "charlm", "lines": ["a" * (MAX_INPUT_CHARS + 1)]}, 400, "lines[0]: 200,001 characters"),
    ("/score", {"model": "charlm", "lines": ["a"] * 300}, 400, "lines: 300 entries; at most 256"),
    ("/score", {"model": "charlm", "lines": ["a"], "colour": "red"}, 400, "colour: unknown field"),
    ("/score", {"model": "nope", "lines": ["a"]}, 404, "model: no model named 'nope'"),
    ("/score", {"model": 7, "lines": ["a"]}, 400, "model: input should be a valid string"),
    ("/score", {"lines": ["a"]}, 400, "model: required, 2 loaded models answer /score"),
    ("/score", {"model": "classifier", "lines": ["a"]}, 400,
     "model: 'classifier' is a classifier model; /score needs a lm model"),
    ("/score", "x" * BIG, 413, "body: larger than the limit"),
    ("/generate", {"model": "charlm", "temperature": "hot"}, 400,
     "temperature: input should be a valid number"),
    ("/generate", '{"model": "charlm", "temperature": NaN}', 400, "NaN is not JSON"),
    ("/generate", '{"model": "charlm", "top_p": Infinity}', 400, "Infinity is not JSON"),
    ("/generate", '{"model": "charlm", "temperature": 1e400}', 400, "temperature: input should be a finite number"),
    ("/generate", {"model": "charlm", "temperature": -0.5}, 400,
     "temperature: expected a finite number > 0"),
    ("/generate", {"model": "charlm", "temperature": 0}, 400, "temperature: expected"),
    ("/generate", {"model": "charlm", "top_k": 0}, 400, "top_k: expected an int >= 1"),
    ("/generate", {"model": "charlm", "top_k": 2.5}, 400, "top_k: input should be a valid integer"),
    ("/generate", {"model": "charlm", "top_k": True}, 400, "top_k: input should be a valid integer"),
    ("/generate", {"model": "charlm", "top_p": 1.5}, 400, "top_p: expected a number in (0, 1]"),
    ("/generate", {"model": "charlm", "length": -1}, 400, "length: expected 0..1000"),
    ("/generate", {"model": "charlm", "length": 10 ** 12}, 400, "length: expected 0..1000"),
    ("/generate", {"model": "charlm", "length": "10"}, 400, "length: input should be a valid integer"),
    ("/generate", {"model": "charlm", "seed": -3}, 400, "seed: expected an int in 0..2**63-1"),
    ("/generate", {"model": "charlm", "seed": 10 ** 30}, 400, "seed: expected an int in"),
    ("/score", '{"model": "charlm", "lines": ["a\\ud800"]}', 400, "a lone surrogate"),
    ("/generate", {"model": "charlm", "greedy": "yes"}, 400, "greedy: input should be a valid boolean"),
    ("/generate", {"model": "charlm", "top": 500}, 400, "top: expected 0..50"),
    ("/generate", {"model": "charlm", "prime": "QUUX"}, 400,
     "prime: 3 character(s) not in the vocabulary: 'Q', 'U', 'X'"),
    ("/generate", {"model": "wordlm", "prime": "the zebra"}, 400,
     "prime: 1 word(s) not in the vocabulary"),
    ("/generate", {"model": "charlm", "prime": "a" * (MAX_INPUT_CHARS + 1)}, 400,
     "prime: 200,001 characters"),
    ("/generate", {"model": "charlm", "greedy": True, "top_k": 3}, 400,
     "greedy: takes the likeliest token; top_k=3"),
    ("/generate", {"model": "charlm", "beam": 2, "temperature": 0.5}, 400,
     "beam: a search, not sampling"),
    ("/generate", {"model": "charlm", "beam": 99}, 400, "beam: expected 0..16"),
    ("/generate", {"model": "charlm", "condition": "1"}, 400,
     "condition: 'charlm' is not a conditioned model"),
    ("/generate", {"model": "clm"}, 400, "condition: 'clm' is a conditioned model"),
    ("/generate", {"model": "clm", "condition": "7"}, 400, "condition: unknown label '7'"),
    ("/generate", {"model": "charlm", "stop": [""]}, 400, "stop: expected at most 16"),
    ("/generate", {"model": "tagger"}, 400, "/generate needs a conditioned_lm or lm model"),
    ("/classify", {"texts": [""]}, 400, "texts[0]: expected some text"),
    ("/classify", {"texts": ["a"], "model": "charlm"}, 400, "/classify needs a classifier"),
    ("/classify", {"texts": [None]}, 400, "texts[0]: input should be a valid string"),
    ("/tag", {"sentences": [[]]}, 400, "sentences[0]: expected at least one word"),
    ("/tag", {"sentences": [["a b"]]}, 400, "sentences[0][0]: a word is non-empty"),
    ("/tag", {"sentences": [["x" * 1001]]}, 400, "sentences[0][0]: a word of 1,001 characters"),
    ("/tag", {"sentences": [3]}, 400, "sentences[0]: input should be a valid string"),
    ("/translate", {"texts": ["the cat"], "beam": 0}, 400, "beam: expected 1..16"),
    ("/translate", {"texts": ["  "]}, 400, "texts[0]: expected a sentence"),
    ("/translate", {"texts": ["the cat"], "length_penalty": -1}, 400, "length_penalty"),
    ("/activations", {"model": "charlm", "text": ""}, 400, "text: expected at least one"),
    ("/activations", {"model": "charlm", "text": "the", "unit": 16}, 400,
     "unit: expected 0..15 (16 units), got 16"),
    ("/activations", {"model": "charlm", "text": "the", "layer": 2}, 400,
     "layer: the model has 2 layer(s)"),
    ("/activations", {"model": "charlm", "text": "the", "kind": "reset"}, 400,
     "kind: a lstm layer has no 'reset' gate"),
    ("/activations", {"model": "charlm", "text": "the", "kind": "mood"}, 400,
     "kind: expected one of"),
    ("/activations", {"model": "wordlm", "text": "the"}, 400,
     "model: activation views need a character model"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(served_app(tmp_path_factory)) as c:
        yield c


def _send(client, endpoint, body):
    if isinstance(body, (str, bytes)):
        return client.post(endpoint, content=body,
                           headers={"content-type": "application/json"})
    return client.post(endpoint, json=body)


@pytest.mark.parametrize("endpoint, body, status, fragment", CASES,
                         ids=[f"{k}-{c[0][1:]}-{c[3][:30]}" for k, c in enumerate(CASES)])
def test_a_bad_request_gets_a_json_error_naming_the_field(client, endpoint, body, status,
                                                          fragment):
    r = _send(client, endpoint, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    assert list(r.json()) == ["error"]
    assert fragment in message, message
    assert "Traceback" not in r.text and "File \"" not in r.text
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("method, path, status", [("GET", "/nowhere", 404),
                                                  ("GET", "/score", 405),
                                                  ("DELETE", "/models", 405),
                                                  ("GET", "/static/nothing.js", 404)])
def test_unknown_paths_and_methods_get_json(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status
    assert "error" in r.json()


def test_a_declared_length_above_the_limit_is_refused_before_reading(client):
    r = client.post("/score", content=b"{}", headers={"content-length": str(BIG)})
    assert r.status_code == 413 and "body: larger than the limit" in r.json()["error"]


def test_an_unexpected_failure_is_a_logged_500_without_traceback(tmp_path_factory,
                                                                 monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("the secret internals")

    monkeypatch.setattr(inference, "score_texts", broken)
    monkeypatch.setattr(inference, "generate_events", broken)
    with TestClient(served_app(tmp_path_factory, ["charlm"])) as c, \
            caplog.at_level(logging.ERROR, logger="rnnkit.serve"):
        for endpoint, body in (("/score", {"lines": ["a"]}), ("/generate", {"prime": "a"})):
            r = c.post(endpoint, json=body)
            assert r.status_code == 500
            assert r.json() == {"error": f"internal error while serving {endpoint} (logged "
                                         f"on the server)"}
            assert "secret" not in r.text
        assert c.get("/health").json()["busy"] == 0            # the slots came back
    assert "the secret internals" in caplog.text               # the server's log has it


def test_serve_refuses_a_port_in_use(tmp_path_factory, capsys):
    dirs, _ = trained_models(tmp_path_factory)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        expect_cli_error(["serve", dirs["charlm"], "--port", port], capsys,
                         f"--port: 127.0.0.1:{port} is already in use")


def test_serve_refuses_a_directory_that_is_not_a_model(tmp_path, capsys):
    expect_cli_error(["serve", tmp_path, "--port", 0], capsys,
                     "not an rnnkit model directory")


def test_serve_refuses_two_models_of_one_name(tmp_path_factory, capsys):
    dirs, _ = trained_models(tmp_path_factory)
    expect_cli_error(["serve", f"x={dirs['charlm']}", f"x={dirs['wordlm']}", "--port", 0],
                     capsys, "a second model named 'x'")


@pytest.mark.parametrize("flag, value, fragment", [
    ("--max-tokens", 0, "--max-tokens: expected a positive int"),
    ("--max-concurrent", -2, "--max-concurrent: expected a positive int"),
    ("--port", 70000, "--port: expected 0..65535")])
def test_serve_refuses_bad_limits(tmp_path_factory, capsys, flag, value, fragment):
    dirs, _ = trained_models(tmp_path_factory)
    expect_cli_error(["serve", dirs["charlm"], flag, value], capsys, fragment)

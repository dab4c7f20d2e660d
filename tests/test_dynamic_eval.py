"""Dynamic evaluation (`rnnkit eval --dynamic LR`): a copy of the model adapts by SGD after
each window it has scored. With rate 0 it is static evaluation; on a text that repeats, it
learns the repetition (lower perplexity than static); the model's files are untouched."""

from __future__ import annotations

import hashlib

import pytest

from conftest import expect_cli_error, run_cli
from rnnkit.data import TokenArray
from rnnkit.tasks import lm
from tiny_data import tiny_files, write_lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dynamic")
    files = tiny_files(root, n=40, seed=8)
    out = root / "lm"
    lm.train_lm(lm.LMDataConfig(data=files["text"], level="word"),
                {"hidden_size": 16, "num_layers": 1}, {"max_steps": 5}, out,
                log=lambda *_: None)
    repeated = write_lines(root / "repeated.txt", ["the cat sat on a mat the dog ran"] * 60)
    return out, files, repeated


def _digests(directory) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def test_rate_zero_is_static_evaluation(trained):
    out, files, _ = trained
    model, tokenizer, _ = lm.load_lm(out)
    ids = [i for line in open(files["text"]) for i in tokenizer.encode_line(line.strip())]
    tokens = TokenArray.from_ids(ids, tokenizer.vocab_size)
    static = lm._stream_nll(model, tokens, 2, 7, "cpu")
    dynamic = lm._dynamic_nll(model, tokens, 2, 7, "cpu", 0.0)
    assert dynamic[1] == static[1]
    assert dynamic[0] == pytest.approx(static[0], rel=1e-6)


def test_it_learns_a_repeated_text_and_leaves_the_files_alone(trained):
    out, _, repeated = trained
    before = _digests(out)
    static = lm.evaluate_file(out, repeated, batch_size=1)
    dynamic = lm.evaluate_file(out, repeated, batch_size=1, dynamic=5.0)
    assert dynamic["tokens"] == static["tokens"]
    assert dynamic["ppl"] < 0.9 * static["ppl"]             # it learns as it reads
    assert dynamic["dynamic"] == {"lr": 5.0, "window": 35, "streams": 1}
    assert _digests(out) == before
    again = lm.evaluate_file(out, repeated, batch_size=1)       # the loaded model unchanged
    assert again["ppl"] == pytest.approx(static["ppl"], rel=1e-9)


def test_the_cli_reports_it_and_refuses_bad_rates(trained, capsys):
    out, files, repeated = trained
    code, stdout, err = run_cli(["eval", str(out), "--data", repeated, "--dynamic", "0.5",
                                 "--batch-size", "1"], capsys)
    assert code == 0, err
    assert "dynamic evaluation: one SGD step of rate 0.5" in stdout
    for bad in ("-1", "nan", "inf"):
        expect_cli_error(["eval", str(out), "--data", repeated, "--dynamic", bad], capsys,
                         "--dynamic")
    expect_cli_error(["eval", str(out), "--data", repeated, "--dynamic", "1", "--int8"],
                     capsys, "--dynamic", "--int8")

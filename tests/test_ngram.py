"""Interpolation with an n-gram model (rnnkit.ngram; `eval|score --ngram`): against a hand
computation from both models' token probabilities — rnnkit's token by token through
`step`, the n-gram's from a hand-written bigram ARPA file by the backoff rule."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import expect_cli_error, run_cli
from rnnkit.tasks import lm
from tiny_data import write_lines

pytest.importorskip("kenlm")

UNIGRAMS = {"<unk>": (-1.0, 0.0), "</s>": (-0.5, 0.0), "<s>": (-99.0, -0.3),
            "the": (-0.6, -0.2), "cat": (-0.8, 0.0), "sat": (-0.9, 0.0)}
BIGRAMS = {("<s>", "the"): -0.1, ("the", "cat"): -0.4, ("cat", "sat"): -0.2}
TEXT = ["the cat sat", "the dog sat on a mat", "a cat"]


def _arpa(path) -> str:
    lines = ["", "\\data\\", f"ngram 1={len(UNIGRAMS)}", f"ngram 2={len(BIGRAMS)}", "",
             "\\1-grams:"]
    lines += [f"{p}\t{w}\t{b}" for w, (p, b) in UNIGRAMS.items()]
    lines += ["", "\\2-grams:"] + [f"{p}\t{v} {w}" for (v, w), p in BIGRAMS.items()]
    lines += ["", "\\end\\"]
    return write_lines(path, lines)


def _bigram_log10(previous: str, word: str) -> float:
    """The backoff rule: the bigram if listed, else the history's backoff + the unigram."""
    word = word if word in UNIGRAMS else "<unk>"
    previous = previous if previous in UNIGRAMS else "<unk>"
    if (previous, word) in BIGRAMS:
        return BIGRAMS[previous, word]
    return UNIGRAMS[previous][1] + UNIGRAMS[word][0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ngram")
    corpus = write_lines(root / "corpus.txt", ["the cat sat", "a dog sat on the mat"] * 10)
    out = root / "lm"
    lm.train_lm(lm.LMDataConfig(data=corpus, level="word"),
                {"hidden_size": 12, "num_layers": 1}, {"max_steps": 10}, out,
                log=lambda *_: None)
    return out, _arpa(root / "bi.arpa"), write_lines(root / "text.txt", TEXT)


def _hand(out, lines, weight, stream: bool):
    """Per line (or over the stream) the interpolated NLL, token by token."""
    model, tokenizer, _ = lm.load_lm(out)
    unk = tokenizer.unk_id
    rnn, ngram = [], []
    state, previous_id = None, None if stream else tokenizer.line_end_id
    with torch.no_grad():
        for line in lines:
            ids = tokenizer.encode_line(line)
            words = ["<unk>" if i == unk else w for w, i in zip(line.split(),
                                                                tokenizer.encode_words(line.split()))]
            if not stream:
                state, previous_id = None, tokenizer.line_end_id
            row_rnn, row_ngram = [], []
            for k, (token, word) in enumerate(zip(ids, words + ["</s>"])):
                row_ngram.append(_bigram_log10((["<s>"] + words)[k], word))
                if stream and previous_id is None:          # the stream's first token: read,
                    row_rnn.append(math.nan)               # not predicted
                else:
                    log_probs, state = model.step(torch.tensor([previous_id]), state)
                    row_rnn.append(float(log_probs[0, token]))
                previous_id = token
            rnn.append(row_rnn)
            ngram.append(row_ngram)
    mix = [[math.log(weight * 10 ** g + (1 - weight) * math.exp(r)) for r, g in zip(rs, gs)]
           for rs, gs in zip(rnn, ngram)]
    return mix, rnn, ngram


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_score_interpolates_each_token_like_the_hand_computation(world, weight):
    out, arpa, text = world
    rows = lm.score_lines(out, text, ngram=arpa, ngram_weight=weight)
    mix, _, _ = _hand(out, TEXT, weight, stream=False)
    assert [r["logprob"] for r in rows] == pytest.approx([sum(m) for m in mix], rel=1e-5)


def test_eval_interpolates_the_stream_and_reports_both_models(world):
    out, arpa, text = world
    m = lm.evaluate_file(out, text, ngram=arpa, ngram_weight=0.4)
    mix, rnn, ngram = _hand(out, TEXT, 0.4, stream=True)
    flat = [x for row in mix for x in row][1:]           # the stream predicts tokens 1..N-1
    assert m["tokens"] == len(flat)
    assert m["loss"] == pytest.approx(-sum(flat) / len(flat), rel=1e-5)
    rnn_flat = [x for row in rnn for x in row][1:]
    ngram_flat = [x for row in ngram for x in row][1:]
    assert m["ngram"]["rnnkit_ppl"] == pytest.approx(math.exp(-sum(rnn_flat) / len(flat)),
                                                    rel=1e-5)
    assert m["ngram"]["ngram_ppl"] == pytest.approx(
        10 ** (-sum(ngram_flat) / len(flat)), rel=1e-5)
    assert "of rnnkit's" in m["ngram"]["policy"] and "<unk>" in m["ngram"]["policy"]


def test_bad_ngram_inputs_are_refused(world, tmp_path, capsys):
    out, arpa, text = world
    expect_cli_error(["eval", out, "--data", text, "--ngram", arpa, "--ngram-weight", "1.5"],
                     capsys, "--ngram-weight", "[0, 1]")
    expect_cli_error(["score", out, text, "--ngram-weight", "0.5"], capsys, "--ngram-weight",
                     "--ngram")
    expect_cli_error(["eval", out, "--data", text, "--ngram", text], capsys, "text.txt",
                     "not an ARPA")
    expect_cli_error(["score", out, text, "--ngram", tmp_path / "none.arpa"], capsys,
                     "none.arpa")
    expect_cli_error(["eval", out, "--data", text, "--ngram", arpa, "--dynamic", "1"], capsys,
                     "--ngram", "--dynamic")
    char = tmp_path / "char"
    lm.train_lm(lm.LMDataConfig(data=text, level="char", batch_size=2), {"hidden_size": 4},
                {"max_steps": 1}, char, log=lambda *_: None)
    expect_cli_error(["score", char, text, "--ngram", arpa], capsys, "--ngram", "char-level")
    code, out_text, err = run_cli(["score", out, text, "--ngram", arpa], capsys)
    assert code == 0 and "n-gram bi.arpa (order 2)" in err

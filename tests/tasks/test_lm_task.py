"""Language modelling end to end on a tiny corpus: train, resume, evaluate, score, generate."""

import math

import pytest
import torch

from rnnkit.tasks import lm
from rnnkit.train import TrainConfig
from conftest import train_losses as _train_losses

TEXT = "\n".join(["the cat sat on the mat", "the dog sat on the log",
                  "a cat and a dog", "the mat and the log"] * 30) + "\n"
MODEL = {"cell": "lstm", "hidden_size": 16, "num_layers": 1, "dropout": 0.1}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _train(corpus, out, level="word", data_options=(), **train):
    data = lm.LMDataConfig(data=str(corpus), level=level, batch_size=4, bptt=8,
                           **dict(data_options))
    cfg = TrainConfig(**{"epochs": 2, "lr": 0.01, "optimizer": "adam", "log_every": 2,
                         "progress": False, **train})
    return lm.train_lm(data, MODEL, cfg, out, log=lambda *_: None)


def test_resume_is_bit_exact(corpus, tmp_path):
    options = {"random_length": True}               # the window lengths must resume too
    _train(corpus, tmp_path / "a", data_options=options, max_steps=30)
    _train(corpus, tmp_path / "b", data_options=options, max_steps=12)
    lm.train_lm(None, None, None, tmp_path / "b", resume=True,
                train_overrides={"max_steps": 30}, log=lambda *_: None)
    a, b = _train_losses(tmp_path / "a"), _train_losses(tmp_path / "b")
    assert [s for s, _ in a] == [s for s, _ in b] and a[-1][0] == 30
    assert a == b                                            # same floats, bit for bit


def test_training_lowers_validation_loss_and_evaluates_consistently(corpus, tmp_path):
    out = tmp_path / "m"
    summary = _train(corpus, out, epochs=3)
    _, tok, _ = lm.load_lm(out)
    assert summary["valid"]["loss"] < 0.5 * math.log(tok.vocab_size)  # far below uniform
    m = lm.evaluate_file(out, corpus)
    # the file is the whole corpus; the figures follow from the loss
    assert m["ppl"] == pytest.approx(math.exp(m["loss"]))
    assert m["tokens"] > 0 and "<eos>" in m["policy"]


def test_score_lines_equals_sum_of_token_log_probs(corpus, tmp_path):
    out = tmp_path / "m"
    _train(corpus, out, max_steps=10)
    sentences = tmp_path / "s.txt"
    sentences.write_text("the cat sat\nthe zebra sat on the mat\n", encoding="utf-8")
    rows = lm.score_lines(out, sentences)
    model, tok, _ = lm.load_lm(out)
    for row, text in zip(rows, ["the cat sat", "the zebra sat on the mat"]):
        ids = tok.encode_line(text)
        inputs = torch.tensor([tok.line_end_id] + ids[:-1])[:, None]
        with torch.no_grad():
            hidden, _ = model(inputs)
            lp = model.log_probs(hidden)[:, 0]
        expected = lp.gather(1, torch.tensor(ids)[:, None]).sum().item()
        assert row["logprob"] == pytest.approx(expected, rel=1e-5)
        assert row["log10prob"] == pytest.approx(expected / math.log(10), rel=1e-5)
        assert row["tokens"] == len(ids)
        assert row["ppl"] == pytest.approx(math.exp(-expected / len(ids)), rel=1e-5)


def test_generate_is_reproducible_and_streams(corpus, tmp_path):
    out = tmp_path / "c"
    _train(corpus, out, level="char", max_steps=10)
    pieces = []
    a = lm.generate(out, "the ", max_tokens=40, seed=3, on_text=pieces.append)
    b = lm.generate(out, "the ", max_tokens=40, seed=3)
    assert a == b == "".join(pieces) and len(a) > 0
    with pytest.raises(ValueError, match="unknown|not in"):
        lm.generate(out, "the \u263a", max_tokens=5)


@pytest.mark.parametrize("softmax", ["class", "adaptive"])
def test_factorised_softmax_trains(corpus, tmp_path, softmax):
    data = lm.LMDataConfig(data=str(corpus), level="word", batch_size=4, bptt=8)
    head = {"class": {"num_classes": 3}, "adaptive": {"adaptive_cutoffs": (4, 8)}}[softmax]
    options = {**MODEL, "softmax": softmax, **head}     # another head's option is refused
    summary = lm.train_lm(data, options, TrainConfig(epochs=1, lr=0.01, optimizer="adam",
                                                     progress=False), tmp_path / softmax,
                          log=lambda *_: None)
    assert math.isfinite(summary["valid"]["loss"])


def test_sentence_mode_trains(corpus, tmp_path):
    data = lm.LMDataConfig(data=str(corpus), level="word", batch_size=4, sentence_mode=True)
    summary = lm.train_lm(data, MODEL, TrainConfig(epochs=1, lr=0.01, optimizer="adam",
                                                   progress=False), tmp_path / "s",
                          log=lambda *_: None)
    assert math.isfinite(summary["valid"]["loss"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "n"
    _train(corpus, out, max_steps=5)
    good = (out / "model.safetensors").read_bytes()
    real = lm.LMTask.train_loss

    def poisoned(self, batch):
        loss, n = real(self, batch)
        return loss * float("nan"), n

    monkeypatch.setattr(lm.LMTask, "train_loss", poisoned)
    with pytest.raises(ValueError, match="nan.*kept"):
        lm.train_lm(None, None, None, out, resume=True, train_overrides={"max_steps": 9},
                    log=lambda *_: None)
    assert (out / "model.safetensors").read_bytes() == good


def test_non_finite_gradient_stops_before_the_update(corpus, tmp_path, monkeypatch):
    out = tmp_path / "g"
    _train(corpus, out, max_steps=4, save_every=2)
    state = (out / "train_state.safetensors").read_bytes()
    real = lm.LMTask.train_loss

    def poisoned(self, batch):
        loss, n = real(self, batch)
        first = next(self.model.parameters())
        return loss + torch.sqrt(0 * first.sum()), n      # finite value, NaN gradient

    monkeypatch.setattr(lm.LMTask, "train_loss", poisoned)
    with pytest.raises(ValueError, match="gradient norm is nan"):
        lm.train_lm(None, None, None, out, resume=True, train_overrides={"max_steps": 9},
                    log=lambda *_: None)
    assert (out / "train_state.safetensors").read_bytes() == state

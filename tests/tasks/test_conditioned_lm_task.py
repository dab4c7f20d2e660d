"""The conditioned language model end to end: the label steers generation, the batched
validation loss is a per-line sum, label and vector conditions, resume."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rnnkit.tasks import conditioned_lm as clm
from rnnkit.train import TrainConfig
from conftest import train_losses as _train_losses

WORDS = "the cat dog sat ran on mat log".split()
MODEL = {"cell": "lstm", "hidden_size": 16, "num_layers": 1, "dropout": 0.0}


def _yes_no_lines(n, seed=0):
    """Label 1 lines start with 'yes', label 0 lines with 'no'; the rest is noise."""
    rng = random.Random(seed)
    return [f"{k % 2}\t{'yes' if k % 2 else 'no'} "
            + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for k in range(n)]


def _train_cfg(**options):
    return TrainConfig(**{"epochs": 100, "optimizer": "adam", "lr": 0.02, "clip": 1.0,
                          "lr_decay": 1.0, "log_every": 5, "progress": False, **options})


@pytest.fixture(scope="module")
def yes_no(tmp_path_factory):
    root = tmp_path_factory.mktemp("clm")
    path = root / "yes_no.tsv"
    path.write_text("\n".join(_yes_no_lines(240)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=["init", "input"])
def trained(request, yes_no, tmp_path_factory):
    out = tmp_path_factory.mktemp("clm-model") / request.param
    data = clm.ConditionedLMDataConfig(data=str(yes_no), batch_size=16)
    summary = clm.train_conditioned_lm(data, {**MODEL, "condition_mode": request.param},
                                       _train_cfg(max_steps=40), out, log=lambda *_: None)
    return out, summary


def test_generation_follows_the_label(trained):
    out, _ = trained
    for label, first in (("1", "yes"), ("0", "no")):
        text = clm.generate(out, label, greedy=True, max_tokens=10)
        assert text.split()[0] == first, (label, text)
        assert "\n" not in text                                  # one line
    sampled = [clm.generate(out, "1", seed=s, max_tokens=10) for s in range(3)]
    assert all(t.split()[0] == "yes" for t in sampled), sampled
    assert clm.generate(out, "1", seed=4, max_tokens=10) == clm.generate(out, "1", seed=4,
                                                                         max_tokens=10)


def test_validation_loss_is_the_per_line_step_by_step_nll(trained, yes_no):
    """The batched, padded validation loss equals a line-by-line recomputation with step()."""
    out, summary = trained
    model, tokenizer, config = clm.load_conditioned_lm(out)
    lines = yes_no.read_text(encoding="utf-8").splitlines()
    held_out = lines[len(lines) - round(0.1 * len(lines)):]               # valid_fraction
    total, count = 0.0, 0
    for line in held_out:
        label, text = line.split("\t")
        ids = tokenizer.encode_line(text)
        state = model.initial_state(1, condition=torch.tensor([config["labels"].index(label)]))
        for previous, target in zip([tokenizer.line_end_id] + ids[:-1], ids):
            log_probs, state = model.step(torch.tensor([previous]), state)
            total -= float(log_probs[0, target])
        count += len(ids)
    assert config["labels"] == ["0", "1"]
    assert summary["valid"]["loss"] == pytest.approx(total / count, rel=1e-5)
    assert summary["valid"]["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_conditioned_nll_of_a_padded_batch_is_the_sum_over_lines(trained):
    out, _ = trained
    model, tokenizer, _ = clm.load_conditioned_lm(out)
    texts = ["yes the cat", "no", "no dog sat on the mat mat"]
    labels = torch.tensor([1, 0, 0])
    encoded = [tokenizer.encode_line(t) for t in texts]
    with torch.no_grad():
        batch = (*clm.sentence_batch(encoded, tokenizer.line_end_id), labels)
        total, count = clm.conditioned_nll(model, batch, "cpu")
        alone = [clm.conditioned_nll(model, (*clm.sentence_batch([e], tokenizer.line_end_id),
                                             labels[k:k + 1]), "cpu")
                 for k, e in enumerate(encoded)]
    assert count == sum(len(e) for e in encoded) == sum(n for _, n in alone)
    assert float(total) == pytest.approx(sum(float(t) for t, _ in alone), rel=1e-5)


def test_unknown_label_is_an_error_naming_it(trained, yes_no, tmp_path):
    out, _ = trained
    with pytest.raises(ValueError, match=r"unknown label '7'; the model knows \['0', '1'\]"):
        clm.generate(out, "7")
    train, valid = tmp_path / "train.tsv", tmp_path / "valid.tsv"
    train.write_text("\n".join(_yes_no_lines(20)) + "\n", encoding="utf-8")
    valid.write_text("1\tyes cat\nneutral\tthe dog\n", encoding="utf-8")
    data = clm.ConditionedLMDataConfig(train=str(train), valid=str(valid))
    with pytest.raises(ValueError, match=r"valid.tsv, line 2: unknown label 'neutral'"):
        clm.train_conditioned_lm(data, MODEL, _train_cfg(max_steps=1), tmp_path / "m",
                                 log=lambda *_: None)


def test_vector_conditions_train_and_generate(tmp_path):
    rng = random.Random(1)
    lines = []
    for k in range(480):                          # 27 steps an epoch: few epoch-end plots
        x = rng.choice([0.0, 1.0])
        lines.append(f"{x},{1 - x}\t{'up' if x else 'down'} " + rng.choice(WORDS))
    path = tmp_path / "vectors.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "m"
    data = clm.ConditionedLMDataConfig(data=str(path), condition="vector", batch_size=16)
    summary = clm.train_conditioned_lm(data, {**MODEL, "condition_mode": "input"},
                                       _train_cfg(max_steps=40), out, log=lambda *_: None)
    _, tokenizer, config = clm.load_conditioned_lm(out)
    assert config["model"]["condition"] == "vector" and config["model"]["condition_size"] == 2
    assert config["labels"] == []
    assert summary["valid"]["loss"] < 0.6 * math.log(tokenizer.vocab_size)
    assert clm.generate(out, "1,0", greedy=True, max_tokens=5).split()[0] == "up"
    assert clm.generate(out, "0,1", greedy=True, max_tokens=5).split()[0] == "down"
    with pytest.raises(ValueError, match="expected 2 numbers, got 3"):
        clm.generate(out, "1,0,0")
    with pytest.raises(ValueError, match="comma-separated list of numbers, got 'up'"):
        clm.generate(out, "up")


@pytest.mark.parametrize("text", ["nan,1", "1,inf"])
def test_vector_condition_must_be_finite(text):
    config = {"model": {"condition": "vector", "condition_size": 2}, "labels": []}
    assert clm.parse_condition("0.5,1", config).tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="condition"):
        clm.parse_condition(text, config)


def test_vector_lines_of_different_lengths_are_an_error(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("0.5,1\tthe cat\n1,2,3\tthe dog\n", encoding="utf-8")
    data = clm.ConditionedLMDataConfig(data=str(path), condition="vector")
    with pytest.raises(ValueError, match=r"bad.tsv, line 2: a vector of 3 numbers, expected 2"):
        clm.train_conditioned_lm(data, MODEL, _train_cfg(max_steps=1), tmp_path / "m",
                                 log=lambda *_: None)


def test_valid_vectors_of_another_length_are_an_error_before_anything_is_written(tmp_path):
    train, valid = tmp_path / "train.tsv", tmp_path / "valid.tsv"
    train.write_text("0.5,1\tthe cat\n1,0\tthe dog\n", encoding="utf-8")
    valid.write_text("0.5,1\tthe cat\n1,2,3\tthe dog\n", encoding="utf-8")
    data = clm.ConditionedLMDataConfig(train=str(train), valid=str(valid), condition="vector")
    with pytest.raises(ValueError, match=r"valid.tsv, line 2: a vector of 3 numbers, "
                                         r"expected 2"):
        clm.train_conditioned_lm(data, MODEL, _train_cfg(max_steps=1), tmp_path / "m",
                                 log=lambda *_: None)
    assert not (tmp_path / "m").exists()


def _stop_and_resume(yes_no, tmp_path, stop, log_every, steps=12):
    """Run a: ``steps`` in one go; run b: ``stop`` steps, then resumed to ``steps`` (7 steps
    an epoch, so b resumes before the reshuffle; dropout draws must resume too)."""
    data = clm.ConditionedLMDataConfig(data=str(yes_no), batch_size=32)
    model = {**MODEL, "dropout": 0.2}
    clm.train_conditioned_lm(data, model, _train_cfg(max_steps=steps, log_every=log_every),
                             tmp_path / "a", log=lambda *_: None)
    clm.train_conditioned_lm(data, model, _train_cfg(max_steps=stop, log_every=log_every),
                             tmp_path / "b", log=lambda *_: None)
    clm.train_conditioned_lm(None, None, None, tmp_path / "b", resume=True,
                             train_overrides={"max_steps": steps}, log=lambda *_: None)
    return tmp_path / "a", tmp_path / "b"


def test_resume_is_bit_exact(yes_no, tmp_path):
    a, b = _stop_and_resume(yes_no, tmp_path, stop=5, log_every=1)
    assert [s for s, _ in _train_losses(a)] == list(range(1, 13))
    assert _train_losses(a) == _train_losses(b)                      # same floats, bit for bit
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_resume_between_two_metric_lines_reports_the_same_losses(yes_no, tmp_path):
    a, b = _stop_and_resume(yes_no, tmp_path, stop=1, log_every=2, steps=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert _train_losses(a) == _train_losses(b)

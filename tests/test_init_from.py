"""`train classifier|tagger --init-from LM_DIR` (rnnkit.tasks.pretrained): shared words take
the language model's rows, the others keep theirs; the language model's layers fill the
encoder's forward direction (its own columns only); mismatches are refused before training."""

from __future__ import annotations

import pytest
import torch

from conftest import expect_cli_error, run_cli
from rnnkit.data import build_tokenizer
from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier
from rnnkit.models.tagger import Tagger, TaggerConfig
from rnnkit.tasks import lm
from rnnkit.tasks.pretrained import init_encoder
from tiny_data import tiny_files, write_lines

E, H = 6, 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    files = tiny_files(root, n=30, seed=10)
    corpus = write_lines(root / "corpus.txt", ["the cat sat on a mat", "a dog ran"] * 20)
    out = root / "lm"
    lm.train_lm(lm.LMDataConfig(data=corpus, level="word"),
                {"hidden_size": H, "embedding_size": E, "num_layers": 2}, {"max_steps": 3},
                out, log=lambda *_: None)
    return out, files, root


def test_shared_words_and_forward_layers_come_from_the_language_model(world):
    out, _, _ = world
    lm_model, lm_tok, _ = lm.load_lm(out)
    tokenizer = build_tokenizer("word", ["the cat sat", "zebra cat", "unheard of"])
    torch.manual_seed(0)
    model = SequenceClassifier(ClassifierConfig(vocab_size=tokenizer.vocab_size, num_classes=2,
                                                embedding_size=E, hidden_size=H, num_layers=3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logged = []
    result = init_encoder(model.encoder, tokenizer, out, logged.append)
    table = model.encoder.embedding.weight
    lm_ids = {lm_tok.token(i): i for i in range(lm_tok.vocab_size)}
    for i in range(tokenizer.vocab_size):
        word = tokenizer.token(i)
        if word == "<pad>":
            assert not table[i].any()
        elif word in lm_ids:
            torch.testing.assert_close(table[i], lm_model.embedding.weight[lm_ids[word]])
        else:
            torch.testing.assert_close(table[i], before["encoder.embedding.weight"][i])
    assert result == {"words": 3, "vocabulary": 6, "layers": 2}    # the, cat, sat
    rnn = dict(model.encoder.rnn.named_parameters())
    for k in range(2):
        for name, value in lm_model.layers[k].named_parameters():
            target = rnn[name.removesuffix("_l0") + f"_l{k}"]
            torch.testing.assert_close(target[tuple(slice(0, n) for n in value.shape)], value)
            if target.shape != value.shape:                   # a backward half's columns
                torch.testing.assert_close(target[:, value.shape[1]:],
                                           before[f"encoder.rnn.{name[:-3]}_l{k}"][:, value.shape[1]:])
    for name, value in rnn.items():                           # backward and layer 3 kept
        if name.endswith("_reverse") or "_l2" in name:
            torch.testing.assert_close(value, before[f"encoder.rnn.{name}"])
    assert "3 of 6 words took its vectors" in logged[0]
    assert "the backward direction and layers 3..3 kept" in logged[0]


def test_a_tagger_keeps_its_character_columns(world):
    out, _, _ = world
    lm_model, _, _ = lm.load_lm(out)
    tokenizer = build_tokenizer("word", ["the cat"])
    model = Tagger(TaggerConfig(vocab_size=tokenizer.vocab_size, num_tags=3, char_vocab_size=5,
                                embedding_size=E, hidden_size=H, num_layers=1))
    before = model.encoder.rnn.weight_ih_l0.detach().clone()
    init_encoder(model.encoder, tokenizer, out, lambda *_: None)
    weight = model.encoder.rnn.weight_ih_l0
    assert weight.shape[1] > E                                # word vector + char features
    torch.testing.assert_close(weight[:, :E], lm_model.layers[0].weight_ih_l0)
    torch.testing.assert_close(weight[:, E:], before[:, E:])


def test_training_from_a_language_model_reports_it(world, tmp_path, capsys):
    out, files, _ = world
    code, stdout, err = run_cli(["train", "classifier", "--data", files["labelled"], "--out",
                                 tmp_path / "c", "--embedding-size", E, "--hidden", H,
                                 "--init-from", out, "--max-steps", 1, "--no-progress"], capsys)
    assert code == 0, err
    assert f"--init-from {out}:" in stdout and "words took its vectors" in stdout


def test_mismatches_are_refused_before_training(world, tmp_path, capsys):
    out, files, root = world
    base = ["train", "classifier", "--data", files["labelled"], "--embedding-size", E]
    expect_cli_error([*base, "--out", tmp_path / "a", "--hidden", 16, "--init-from", out],
                     capsys, "--init-from", "hidden size", "8", "16")
    expect_cli_error([*base, "--out", tmp_path / "b", "--hidden", H, "--cell", "gru",
                      "--init-from", out], capsys, "--init-from", "cell")
    expect_cli_error([*base, "--out", tmp_path / "c", "--init-from", root], capsys,
                     str(root), "config.json")
    expect_cli_error(["train", "lm", "--data", files["text"], "--out", tmp_path / "d",
                      "--init-from", out], capsys, "--init-from", "classifier and tagger")
    char = tmp_path / "char"
    lm.train_lm(lm.LMDataConfig(data=files["text"], level="char", batch_size=2),
                {"hidden_size": H, "embedding_size": E, "num_layers": 1}, {"max_steps": 1},
                char, log=lambda *_: None)
    expect_cli_error([*base, "--out", tmp_path / "e", "--hidden", H, "--init-from", char],
                     capsys, "--init-from", "char-level")
    assert not (tmp_path / "a").exists() and not (tmp_path / "e").exists()

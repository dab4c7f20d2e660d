"""Classification end to end on a tiny keyword task: train, resume, select, evaluate, predict
(rnnkit.tasks.classifier)."""

import json
import math
import random

import pytest
import torch

from rnnkit.data.labelled import read_labelled
from rnnkit.tasks import classifier
from rnnkit.tasks.common import labelled_splits
from rnnkit.train import TrainConfig
from conftest import snapshot, train_losses as _train_losses

NEUTRAL = ["the", "a", "film", "plot", "actor", "scene", "story", "music", "was", "is", "very",
           "quite"]
MODEL = {"cell": "lstm", "embedding_size": 8, "hidden_size": 8, "pooling": "max",
         "dropout": 0.0}


def keyword_lines(n: int, seed: int) -> list[str]:
    """``label<TAB>text``: label 1 iff the text holds "good" (or 2 iff "bad", with three)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 7))]
        label = rng.randint(0, 1)
        if label:
            words.insert(rng.randint(0, len(words)), "good")
        lines.append(f"{label}\t{' '.join(words)}")
    return lines


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyword")
    write_lines(folder / "train.tsv", ["label\ttext"] + keyword_lines(240, seed=1))
    write_lines(folder / "dev.tsv", keyword_lines(60, seed=2))
    return folder


def _train(data_cfg, out, model=None, **train):
    cfg = TrainConfig(**{"epochs": 3, "lr": 0.03, "optimizer": "adam", "log_every": 2,
                         "progress": False, **train})
    return classifier.train_classifier(data_cfg, model or MODEL, cfg, out, log=lambda *_: None)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "kw"
    summary = _train(classifier.ClassifierDataConfig(data=str(data), batch_size=16), out)
    return out, summary


# ---------------------------------------------------------------- metrics and labels

def test_classification_metrics_against_hand_computation():
    gold = [0, 0, 0, 1, 1, 2, 2, 2]
    predicted = [0, 0, 1, 1, 0, 1, 1, 0]           # class 2 is never predicted
    m = classifier.classification_metrics(predicted, gold, 3)
    assert m["confusion"] == [[2, 1, 0], [1, 1, 0], [1, 2, 0]]
    assert m["accuracy"] == 3 / 8
    # class 0: P = 2/4, R = 2/3 -> F1 = 4/7; class 1: P = 1/4, R = 1/2 -> F1 = 1/3; class 2: 0
    assert m["f1"] == pytest.approx([4 / 7, 1 / 3, 0.0], abs=1e-15)
    assert m["macro_f1"] == pytest.approx((4 / 7 + 1 / 3) / 3, abs=1e-15)


def test_evaluation_loss_is_mean_gold_nll_and_objective_is_error_rate():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    m = classifier.evaluation(probs, [0, 1, 1])
    expected = -(math.log(0.7) + math.log(0.8) + math.log(0.4)) / 3
    assert m["loss"] == pytest.approx(expected, rel=1e-6)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["objective"] == pytest.approx(1 / 3 + 1e-6 * expected, rel=1e-9)


def test_sorted_labels_numeric_when_all_integers():
    assert classifier.sorted_labels(["10", "2", "-1", "2"]) == ["-1", "2", "10"]
    assert classifier.sorted_labels(["pos", "neg", "10"]) == ["10", "neg", "pos"]


def test_labelled_splits_holds_out_the_last_fraction_of_one_file(tmp_path):
    f = write_lines(tmp_path / "all.tsv", keyword_lines(20, seed=3))
    cfg = classifier.ClassifierDataConfig(data=str(f), valid_fraction=0.25)
    train, valid, test = labelled_splits(cfg, read_labelled)
    assert [e.line for e in train] == list(range(1, 16))
    assert [e.line for e in valid] == list(range(16, 21)) and test is None


# ---------------------------------------------------------------- training

def test_classifier_learns_the_keyword_task(trained):
    out, summary = trained
    assert summary["valid"]["accuracy"] >= 0.9
    assert {"config.json", "labels.json", "model.safetensors", "run.json"} <= {
        p.name for p in out.iterdir()}
    assert json.loads((out / "labels.json").read_text())["labels"] == ["0", "1"]


def test_evaluate_file_agrees_with_predict_file(trained, data, tmp_path):
    out, summary = trained
    test = write_lines(tmp_path / "test.tsv", keyword_lines(50, seed=4))
    m = classifier.evaluate_file(out, test)
    rows = classifier.predict_file(out, test)
    gold = [e.label for e in read_labelled(test)]
    assert [r["line"] for r in rows] == list(range(1, 51))
    assert all(sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-6) for r in rows)
    assert all(r["label"] == max(r["probabilities"], key=r["probabilities"].get) for r in rows)
    assert m["accuracy"] == sum(r["label"] == g for r, g in zip(rows, gold)) / 50
    nll = [-math.log(r["probabilities"][g]) for r, g in zip(rows, gold)]
    assert m["loss"] == pytest.approx(sum(nll) / 50, rel=1e-5)
    labels = ["0", "1"]
    confusion = [[sum(g == a and r["label"] == b for r, g in zip(rows, gold)) for b in labels]
                 for a in labels]
    assert m["confusion"] == confusion and m["examples"] == 50 and m["labels"] == labels
    # the valid split evaluated from its file gives the figures of the training summary
    again = classifier.evaluate_file(out, data / "dev.tsv")
    assert again["accuracy"] == summary["valid"]["accuracy"]
    assert again["loss"] == pytest.approx(summary["valid"]["loss"], rel=1e-6)


def test_predict_file_scores_each_example_as_alone(trained, tmp_path):
    out, _ = trained
    f = write_lines(tmp_path / "p.txt", ["the good film", "1\tvery quite good plot was",
                                         "a scene"])
    rows = classifier.predict_file(out, f)
    model, tok, _ = classifier.load_classifier(out)
    for row in rows:
        ids = torch.tensor(tok.encode_words(row["text"].split()))[:, None]
        with torch.no_grad():
            probs = torch.softmax(model(ids, torch.tensor([len(ids)])), -1)[0]
        assert [row["probabilities"][k] for k in ("0", "1")] == pytest.approx(probs.tolist(),
                                                                              abs=1e-6)


@pytest.mark.parametrize("reader", ["evaluate_file", "predict_file"])
def test_unknown_label_names_file_and_line(trained, tmp_path, reader):
    out, _ = trained
    f = write_lines(tmp_path / "u.tsv", ["label\ttext", "0\ta film", "1\tgood", "7\tthe plot"])
    with pytest.raises(ValueError) as e:
        getattr(classifier, reader)(out, f)
    assert str(e.value).startswith(f"{f}, line 4: unknown label '7'")


def test_unknown_valid_label_names_the_valid_file(tmp_path):
    train = write_lines(tmp_path / "train.tsv", keyword_lines(20, seed=5))
    valid = write_lines(tmp_path / "valid.tsv", ["0\ta film", "2\tthe plot"])
    cfg = classifier.ClassifierDataConfig(train=str(train), valid=str(valid))
    with pytest.raises(ValueError) as e:
        _train(cfg, tmp_path / "m", max_steps=1)
    assert str(e.value).startswith(f"{valid}, line 2: unknown label '2'")


def test_unknown_valid_label_in_a_folder_names_the_dev_file(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_lines(folder / "train.tsv", keyword_lines(20, seed=5))
    dev = write_lines(folder / "dev.tsv", ["0\ta film", "2\tthe plot"])
    with pytest.raises(ValueError) as e:
        _train(classifier.ClassifierDataConfig(data=str(folder)), tmp_path / "m", max_steps=1)
    assert str(e.value).startswith(f"{dev}, line 2: unknown label '2'")
    assert not (tmp_path / "m").exists()          # a refused start writes nothing: fix the
    write_lines(dev, ["0\ta film", "1\tthe plot"])  # file and the same command runs
    _train(classifier.ClassifierDataConfig(data=str(folder)), tmp_path / "m", max_steps=1)
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_train_refuses_a_directory_holding_a_model(trained, data):
    out, _ = trained
    before = snapshot(out)
    with pytest.raises(ValueError, match="holds a model or run already"):
        _train(classifier.ClassifierDataConfig(data=str(data)), out, max_steps=1)
    assert snapshot(out) == before                         # nothing written, nothing removed


def test_resume_is_bit_exact(data, tmp_path):
    cfg = classifier.ClassifierDataConfig(data=str(data), batch_size=16)
    model = {**MODEL, "dropout": 0.3, "embedding_dropout": 0.1, "pooling": "attention"}
    _train(cfg, tmp_path / "a", model, max_steps=24)               # 15 steps per epoch
    _train(cfg, tmp_path / "b", model, max_steps=10)
    classifier.train_classifier(None, None, None, tmp_path / "b", resume=True,
                                train_overrides={"max_steps": 24}, log=lambda *_: None)
    a, b = _train_losses(tmp_path / "a"), _train_losses(tmp_path / "b")
    assert [s for s, _ in a] == [s for s, _ in b] and a[-1][0] == 24
    assert a == b                                            # same floats, bit for bit


def test_selected_model_has_the_best_validation_accuracy(data, tmp_path, monkeypatch):
    real = classifier.evaluation
    calls = []

    def rising_loss(probs, gold):              # a loss that only grows: selecting on the
        m = real(probs, gold)                  # loss would keep the first validation
        calls.append(m["accuracy"])
        return {**m, "loss": float(len(calls))}

    monkeypatch.setattr(classifier, "evaluation", rising_loss)
    out = tmp_path / "sel"
    _train(classifier.ClassifierDataConfig(data=str(data), batch_size=16), out, epochs=2,
           eval_every=3)
    valid = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracies = [e["accuracy"] for e in valid if e["split"] == "valid"]
    assert accuracies[0] < max(accuracies)
    monkeypatch.setattr(classifier, "evaluation", real)
    assert classifier.evaluate_file(out, data / "dev.tsv")["accuracy"] == max(accuracies)


def test_bpe_level_learns_and_predicts_with_its_subwords(data, tmp_path):
    out = tmp_path / "bpe"
    summary = _train(classifier.ClassifierDataConfig(data=str(data), batch_size=16,
                                                     level="bpe", bpe_vocab_size=300), out)
    assert summary["valid"]["accuracy"] >= 0.9
    model, tok, config = classifier.load_classifier(out)
    assert tok.level == "bpe"
    text = "the plot was good"
    rows = classifier.predict_file(out, write_lines(tmp_path / "x.txt", [text]))
    ids = tok.encode_line(text)[:-1]                      # subwords, no line end
    assert tok.decode(ids) == text
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor(ids)[:, None], torch.tensor([len(ids)]))
                                 .double(), -1)[0]
    got = torch.tensor([rows[0]["probabilities"][label] for label in config["labels"]],
                       dtype=torch.float64)
    torch.testing.assert_close(got, expected)

"""Tagging end to end on a tiny deterministic word -> tag task: train, resume, select,
evaluate, predict (rnnkit.tasks.tagger)."""

import json
import random

import pytest
import torch

from rnnkit.data.labelled import read_tagged
from rnnkit.tasks import tagger
from rnnkit.train import TrainConfig
from conftest import snapshot, train_losses as _train_losses

# the tag follows from the word (and from its ending, for words never seen in training)
LEXICON = {"walking": "VERB", "talking": "VERB", "singing": "VERB", "eating": "VERB",
           "quickly": "ADV", "slowly": "ADV", "badly": "ADV", "gladly": "ADV",
           "cats": "NOUN", "dogs": "NOUN", "birds": "NOUN", "fish": "NOUN",
           "the": "DET", "a": "DET", "some": "DET", "and": "CONJ"}
UNSEEN = {"jumping": "VERB", "sadly": "ADV", "frogs": "NOUN"}
MODEL = {"cell": "lstm", "embedding_size": 8, "hidden_size": 8, "num_layers": 1,
         "char_embedding_size": 4, "char_hidden_size": 4, "dropout": 0.0, "word_dropout": 0.0}


def sentences(n: int, seed: int, lexicon=LEXICON) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    words = sorted(lexicon)
    return [[(w, lexicon[w]) for w in rng.choices(words, k=rng.randint(2, 6))]
            for _ in range(n)]


def conllu(sents, comments=True) -> str:
    """CoNLL-U with every column filled; XPOS is the lower-cased tag."""
    out = []
    for k, sentence in enumerate(sents):
        if comments:
            out += [f"# sent_id = {k + 1}", f"# text = {' '.join(w for w, _ in sentence)}"]
        for i, (w, t) in enumerate(sentence, start=1):
            out.append("\t".join([str(i), w, w.lower(), t, t.lower(), "Number=Sing",
                                  str(i - 1), "dep" if i > 1 else "root", "_", "_"]))
        out.append("")
    return "\n".join(out) + "\n"


def columns(sents) -> str:
    return "".join("".join(f"{w}\t{t}\n" for w, t in s) + "\n" for s in sents)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pos")
    write(folder / "train.conllu", conllu(sentences(150, seed=1)))
    write(folder / "dev.conllu", conllu(sentences(30, seed=2)))
    return folder


def _train(data_cfg, out, model=None, **train):
    cfg = TrainConfig(**{"epochs": 3, "lr": 0.03, "optimizer": "adam", "log_every": 2,
                         "progress": False, **train})
    return tagger.train_tagger(data_cfg, model or MODEL, cfg, out, log=lambda *_: None)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pos"
    return out, _train(tagger.TaggerDataConfig(data=str(data), batch_size=16), out)


# ---------------------------------------------------------------- metrics

def test_tag_metrics_against_hand_computation():
    gold = [[0, 1, 2, 3], [1, 1], [2, 0, 0]]
    predicted = [[0, 1, 0, 3], [1, 1], [2, 2, 1]]
    unseen = [[False, True, True, False], [False, True], [True, False, True]]
    m = tagger.tag_metrics(predicted, gold, unseen)
    # right: 1 1 0 1 | 1 1 | 1 0 0 -> 6 of 9; unseen right: 1 0 | 1 | 1 0 -> 3 of 5
    assert m == {"accuracy": 6 / 9, "unseen_accuracy": 3 / 5, "unseen_words": 5,
                 "tokens": 9, "sentence_accuracy": 1 / 3}
    none_unseen = tagger.tag_metrics(predicted, gold, [[False] * len(g) for g in gold])
    assert none_unseen["unseen_accuracy"] is None and none_unseen["unseen_words"] == 0


def test_unknown_tag_at_evaluation_names_file_and_line(trained, tmp_path):
    out, _ = trained
    f = write(tmp_path / "bad.conllu", conllu([[("the", "DET"), ("cats", "NOUN")],
                                               [("a", "DET"), ("dogs", "NOUN"), ("and", "XX")]]))
    with pytest.raises(ValueError) as e:                 # 2 comments + 2 words + blank + 2
        tagger.evaluate_file(out, f)                     # comments + 2 words: line 10
    assert str(e.value).startswith(f"{f}, line 10: unknown tag 'XX'")


# ---------------------------------------------------------------- training

def test_tagger_learns_a_word_to_tag_mapping(trained):
    _, summary = trained
    assert summary["valid"]["accuracy"] >= 0.95


def test_evaluate_file_agrees_with_predict_file(trained, data, tmp_path):
    out, summary = trained
    lexicon = {**LEXICON, **UNSEEN}
    gold_sents = sentences(40, seed=3, lexicon=lexicon)
    test = write(tmp_path / "test.txt", columns(gold_sents))           # columns format
    m = tagger.evaluate_file(out, test)
    tagged = tagger.predict_file(out, test, tmp_path / "tagged.txt")
    assert tagged is None
    predicted, fmt = read_tagged(tmp_path / "tagged.txt")
    assert fmt == "columns" and len(predicted) == len(gold_sents)
    pairs = [(w, g, p) for s, ps in zip(gold_sents, predicted)
             for (w, g), p in zip(s, ps.tags)]
    assert [w for w, _, _ in pairs] == [w for s in predicted for w in s.words]
    unseen = [(g, p) for w, g, p in pairs if w not in LEXICON]
    assert len(unseen) == m["unseen_words"] > 0
    assert m["unseen_accuracy"] == sum(g == p for g, p in unseen) / len(unseen)
    assert m["accuracy"] == sum(g == p for _, g, p in pairs) / len(pairs)
    assert m["tokens"] == len(pairs) and m["sentences"] == 40
    model, word_tok, char_tok, config = tagger.load_tagger(out)
    nll = 0.0
    with torch.no_grad():                                      # each sentence alone
        for s in gold_sents:
            forms = [w for w, _ in s]
            gold = torch.tensor([config["tags"].index(t) for _, t in s])
            words, lengths, _, chars, char_lengths, index = tagger.collate(
                [word_tok.encode_words(forms)], None, [forms], char_tok)
            scores = model(words, lengths, chars, char_lengths, index)[:, 0].double()
            nll -= scores.log_softmax(-1)[torch.arange(len(s)), gold].sum().item()
    assert m["loss"] == pytest.approx(nll / len(pairs), rel=1e-5)
    assert m["sentence_accuracy"] == sum(
        all(g == p for (_, g), p in zip(s, ps.tags))
        for s, ps in zip(gold_sents, predicted)) / 40
    # the valid split evaluated from its file gives the figures of the training summary
    again = tagger.evaluate_file(out, data / "dev.conllu")
    assert again["accuracy"] == summary["valid"]["accuracy"]
    assert again["loss"] == pytest.approx(summary["valid"]["loss"], rel=1e-6)


@pytest.mark.parametrize("column", ["upos", "xpos"])
def test_predict_file_changes_only_the_chosen_conllu_column(trained, tmp_path, column):
    out, _ = trained
    text = conllu(sentences(5, seed=4))
    lines = text.split("\n")
    lines.insert(3, "2-3\tab\t_\t_\t_\t_\t_\t_\t_\t_")        # a multiword range, words 2-3
    lines.insert(5, "2.1\tgone\tgo\tVERB\tverb\t_\t_\t_\t1:dep\t_")  # an empty node after 2
    for k, line in enumerate(lines):                                     # no tags to read
        if "\t" in line and line.split("\t")[0].isdigit():
            cols = line.split("\t")
            cols[3] = cols[4] = "_"
            lines[k] = "\t".join(cols)
    source = write(tmp_path / "in.conllu", "\n".join(lines))
    written = tmp_path / "out.conllu"
    tagger.predict_file(out, source, written, column=column)
    returned = tagger.predict_file(out, source, column=column)
    assert written.read_text(encoding="utf-8") == returned
    after = returned.split("\n")
    assert len(after) == len(lines)
    index = tagger.TAG_COLUMNS[column]
    changed = 0
    for before_line, after_line in zip(lines, after):
        b, a = before_line.split("\t"), after_line.split("\t")
        if len(b) == 10 and b[0].isdigit():
            assert a[:index] + a[index + 1:] == b[:index] + b[index + 1:]
            assert a[index] == LEXICON[a[1]]               # the model knows these words
            changed += 1
        else:
            assert after_line == before_line               # comments, ranges, empty nodes
    assert changed == sum(len(s) for s in sentences(5, seed=4))


def test_train_refuses_a_directory_holding_a_model(trained, data):
    out, _ = trained
    before = snapshot(out)
    with pytest.raises(ValueError, match="holds a model or run already"):
        _train(tagger.TaggerDataConfig(data=str(data)), out, max_steps=1)
    assert snapshot(out) == before                         # nothing written, nothing removed


def test_resume_is_bit_exact(data, tmp_path):
    cfg = tagger.TaggerDataConfig(data=str(data), batch_size=16)      # 10 steps per epoch
    model = {**MODEL, "dropout": 0.2, "word_dropout": 0.2}
    _train(cfg, tmp_path / "a", model, max_steps=16)
    _train(cfg, tmp_path / "b", model, max_steps=6)
    tagger.train_tagger(None, None, None, tmp_path / "b", resume=True,
                        train_overrides={"max_steps": 16}, log=lambda *_: None)
    a, b = _train_losses(tmp_path / "a"), _train_losses(tmp_path / "b")
    assert [s for s, _ in a] == [s for s, _ in b] and a[-1][0] == 16
    assert a == b                                            # same floats, bit for bit


def test_selected_model_has_the_best_validation_accuracy(data, tmp_path, monkeypatch):
    real = tagger.evaluation
    calls = []

    def rising_loss(*args):                    # a loss that only grows: selecting on the
        m = real(*args)                        # loss would keep the first validation
        calls.append(m["accuracy"])
        return {**m, "loss": float(len(calls))}

    monkeypatch.setattr(tagger, "evaluation", rising_loss)
    out = tmp_path / "sel"
    _train(tagger.TaggerDataConfig(data=str(data), batch_size=16), out, epochs=1,
           eval_every=2)
    valid = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracies = [e["accuracy"] for e in valid if e["split"] == "valid"]
    assert accuracies[0] < max(accuracies)
    monkeypatch.setattr(tagger, "evaluation", real)
    assert tagger.evaluate_file(out, data / "dev.conllu")["accuracy"] == max(accuracies)

"""Inference on long inputs stays within bounded memory (rnnkit.config.MAX_INPUT_*,
BATCH_*): ``score`` reads a long line in windows carrying the state and gives the score of
the whole line; a classifier, tagger or translator line longer than it reads whole is
refused naming its file and line, before it is tokenized. The command lines run under an
address-space limit, so a regression fails instead of exhausting the machine."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rnnkit.config import MAX_INPUT_CHARS
from rnnkit.models.seq2seq import greedy_translate
from rnnkit.tasks import classifier, common, lm, tagger, translator
from conftest import cli_under_memory_limit
from tiny_data import WORDS, tiny_files, tiny_models

LONG_CHARS = 20_000_000     # before the windows, scoring this line took about 6 GB


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    f = tiny_files(root, n=24, seed=5)
    out = tiny_models(root, f)
    out["lm"] = out["wordlm"]
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) for _ in range(LONG_CHARS // 3))[:LONG_CHARS]
    long = root / "long.txt"
    long.write_text(text + "\n", encoding="utf-8")
    return out, f, str(long)


def test_score_reads_a_long_line_in_bounded_memory(models):
    out, _, long = models
    r = cli_under_memory_limit("score", str(out["lm"]), long)
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    fields = row.split("\t")
    assert fields[0] == "1" and int(fields[3]) > LONG_CHARS // 5
    assert float(fields[1]) < 0


@pytest.mark.parametrize("command", [("predict", "classifier"), ("predict", "tagger"),
                                     ("translate", "translator")])
def test_whole_line_models_refuse_a_long_line_before_tokenizing(models, command):
    out, _, long = models
    verb, task = command
    r = cli_under_memory_limit(verb, str(out[task]), long)
    assert r.returncode == 2, r.stderr
    message = r.stderr.strip()
    assert "Traceback" not in r.stderr and len(message.splitlines()) == 1
    assert f"{long}, line 1: " in message
    assert "characters" in message and f"a {task}" in message


def test_score_in_windows_equals_the_whole_line(models, tmp_path, monkeypatch):
    out, f, _ = models
    rng = random.Random(1)
    lines = [" ".join(rng.choice(WORDS) for _ in range(n)) for n in (3, 40, 1, 17, 60)]
    path = tmp_path / "lines.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    whole = lm.score_lines(out["lm"], path)
    vocab = lm.load_lm(out["lm"])[0].config.vocab_size
    monkeypatch.setattr(common, "BATCH_LOGITS", 7 * vocab)          # windows of 7 tokens
    assert common.logits_tokens(vocab) == 7
    windowed = lm.score_lines(out["lm"], path)
    assert [r["tokens"] for r in windowed] == [len(line.split()) + 1 for line in lines]
    for a, b in zip(whole, windowed):
        assert a["line"] == b["line"] and a["text"] == b["text"]
        assert b["logprob"] == pytest.approx(a["logprob"], rel=1e-6)        # float32 sums


def test_score_json_streams_one_strict_array(models, tmp_path):
    out, f, _ = models
    r = cli_under_memory_limit("score", str(out["lm"]), f["text"], "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["line"] for row in rows] == list(range(1, 25))
    assert rows == lm.score_lines(out["lm"], f["text"])


def test_length_batches_keep_within_both_budgets():
    rng = random.Random(2)
    lengths = [rng.randint(1, 50) for _ in range(300)] + [500, 90]
    batches = list(common.length_batches(lengths, 16, max_tokens=200))
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 16
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= 200
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)                       # shortest first: little padding
    assert [500] in [[lengths[i] for i in b] for b in batches]


@pytest.mark.parametrize("limit_name, limit", [("MAX_INPUT_CHARS", 10),
                                               ("MAX_INPUT_TOKENS", 3)])
def test_the_classifier_names_the_line_too_long(models, tmp_path, monkeypatch, limit_name,
                                                limit):
    out, _, _ = models
    path = tmp_path / "in.tsv"
    path.write_text("0\tthe cat\n1\tthe cat sat on a mat\n", encoding="utf-8")
    monkeypatch.setattr(common, limit_name, limit)
    with pytest.raises(ValueError, match=r"in.tsv, line 2: \d+ (characters|tokens); a "
                                         r"classifier reads a line whole"):
        classifier.predict_file(out["classifier"], path)


def test_the_tagger_names_the_sentence_and_the_word(models, tmp_path, monkeypatch):
    out, _, _ = models
    path = tmp_path / "in.tsv"
    path.write_text("the\ncat\n\nsat\n" + "x" * 1001 + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"in.tsv, line 5: a word of 1,001 characters"):
        tagger.predict_file(out["tagger"], path)
    monkeypatch.setattr(tagger, "MAX_INPUT_TOKENS", 1)
    with pytest.raises(ValueError, match=r"in.tsv, line 1: a sentence of 2 words"):
        tagger.predict_file(out["tagger"], path)


def test_the_translator_names_the_line_and_translates_what_fits(models, tmp_path,
                                                                 monkeypatch):
    out, _, _ = models
    lines = ["the cat", "a dog sat on the mat"]
    before = translator.translate_lines(out["translator"], lines, beam=1)
    monkeypatch.setattr(common, "MAX_INPUT_CHARS", 10)
    with pytest.raises(ValueError, match=r"f.txt, line 2: 20 characters; a translator"):
        translator.translate_lines(out["translator"], lines, beam=1, path="f.txt")
    assert translator.translate_lines(out["translator"], lines[:1], beam=1) == before[:1]
    assert MAX_INPUT_CHARS > 10                       # the documented bound is untouched


def test_greedy_without_weights_decodes_the_same(models):
    out, _, _ = models
    model, src_tok, _, _ = translator.load_translator(out["translator"])
    ids = src_tok.encode_lines(["the cat sat", "a dog"])
    src, lengths = common.pad(ids, 0)
    with torch.no_grad():
        kept, weights = greedy_translate(model, src, lengths, 9)
        light, none = greedy_translate(model, src, lengths, 9, weights=False)
    assert kept == light and none is None and weights.shape[1:] == (2, src.shape[0])

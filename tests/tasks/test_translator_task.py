"""Translation end to end on a tiny word-for-word corpus: train, resume, evaluate (sacrebleu),
translate (greedy in batches, beam search), the length limit, the attention picture."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from rnnkit.data.labelled import read_parallel
from rnnkit.models.seq2seq import BOS_ID, EOS_ID, Seq2Seq
from rnnkit.tasks import translator as tr
from rnnkit.train import TrainConfig

SOURCE_WORDS = "a b c d e f g h".split()          # word k translates to TARGET_WORDS[k]
TARGET_WORDS = "A B C D E F G H".split()
MODEL = {"cell": "gru", "embedding_size": 16, "hidden_size": 16, "dropout": 0.0}


def _pairs(rng, n, shortest=2, longest=5):
    out = []
    for _ in range(n):
        idx = [rng.randrange(len(SOURCE_WORDS)) for _ in range(rng.randint(shortest, longest))]
        out.append((" ".join(SOURCE_WORDS[i] for i in idx), " ".join(TARGET_WORDS[i] for i in idx)))
    return out


def _write_pairs(folder, split, pairs, source="de", target="en"):
    (folder / f"{split}.{source}").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (folder / f"{split}.{target}").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Multi30k-style names: train.xx, val.xx, test_2016_flickr.xx."""
    folder = tmp_path_factory.mktemp("pairs")
    rng = random.Random(0)
    for split, n in (("train", 480), ("val", 20), ("test_2016_flickr", 12)):
        _write_pairs(folder, split, _pairs(rng, n))
    return folder


def _data(corpus, **options):
    return tr.TranslationDataConfig(**{"data": str(corpus), "level": "word", "min_count": 1,
                                       "batch_size": 16, **options})


def _train_cfg(**options):
    return TrainConfig(**{"epochs": 100, "optimizer": "adam", "lr": 0.02, "clip": 1.0,
                          "lr_decay": 1.0, "log_every": 5, "progress": False, **options})


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("translator") / "m"
    summary = tr.train_translator(_data(corpus), MODEL, _train_cfg(max_steps=120), out,
                                  log=lambda *_: None)
    return out, summary


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


# ---- data ----------------------------------------------------------------------------------

def test_find_pair_files_picks_multi30k_names(corpus, tmp_path):
    cfg = _data(corpus)
    assert tr.find_pair_files(cfg, "train") == (str(corpus / "train.de"), str(corpus / "train.en"))
    assert tr.find_pair_files(cfg, "valid") == (str(corpus / "val.de"), str(corpus / "val.en"))
    assert tr.find_pair_files(cfg, "test") == (str(corpus / "test_2016_flickr.de"),
                                               str(corpus / "test_2016_flickr.en"))
    # the other direction, and a folder of TSV files (no test split: None)
    reverse = tr.find_pair_files(_data(corpus, source_lang="en", target_lang="de"), "valid")
    assert reverse == (str(corpus / "val.en"), str(corpus / "val.de"))
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tsv / name).write_text("a b\tA B\n", encoding="utf-8")
    cfg = tr.TranslationDataConfig(data=str(tsv))
    assert tr.find_pair_files(cfg, "train") == (str(tsv / "train.tsv"), None)
    assert tr.find_pair_files(cfg, "valid") == (str(tsv / "dev.tsv"), None)
    assert tr.find_pair_files(cfg, "test") is None
    # explicit files win over the folder
    explicit = tr.TranslationDataConfig(train="x.de, x.en", valid="v.tsv")
    assert tr.find_pair_files(explicit, "train") == ("x.de", "x.en")
    assert tr.find_pair_files(explicit, "valid") == ("v.tsv", None)


def test_find_pair_files_refuses_two_files_of_one_split(corpus, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("train.de", "train.en", "val.de", "val.en", "test_2016_flickr.de",
                 "test_2016_flickr.en", "test_2017_mscoco.de", "test_2017_mscoco.en"):
        (folder / name).write_text("a\n", encoding="utf-8")
    cfg = tr.TranslationDataConfig(data=str(folder))
    with pytest.raises(ValueError, match="test_2017_mscoco.de"):
        tr.find_pair_files(cfg, "test")
    with pytest.raises(ValueError, match=r"expected one valid file per language \(\*\.fr"):
        tr.find_pair_files(tr.TranslationDataConfig(data=str(corpus), source_lang="fr"), "valid")


def test_collate_pairs_shifts_targets_behind_the_begin_symbol():
    src, src_len, tgt_in, tgt_out = tr.collate_pairs([[5, 6, 2], [7, 2]], [[8, 2], [9, 10, 11, 2]])
    assert src.t().tolist() == [[5, 6, 2], [7, 2, 0]] and src_len.tolist() == [3, 2]
    assert tgt_in.t().tolist() == [[BOS_ID, 8, 0, 0], [BOS_ID, 9, 10, 11]]
    assert tgt_out.t().tolist() == [[8, 2, 0, 0], [9, 10, 11, 2]]


# ---- training ------------------------------------------------------------------------------

def test_training_lowers_validation_loss_and_translates_training_sentences(trained, corpus):
    out, summary = trained
    _, _, tgt_tok, _ = tr.load_translator(out)
    valid = [e["loss"] for e in map(json.loads, _lines(out / "metrics.jsonl"))
             if e["split"] == "valid"]
    assert summary["valid"]["loss"] < 0.3 * math.log(tgt_tok.vocab_size)   # uniform: log V
    assert summary["valid"]["loss"] < 0.5 * valid[0]
    assert summary["valid"]["bleu"] > 30
    sources, references = _lines(corpus / "train.de")[:40], _lines(corpus / "train.en")[:40]
    for beam in (1, 3):
        hypotheses = tr.translate_lines(out, sources, beam=beam)
        assert len(hypotheses) == len(sources)
        assert tr.bleu_chrf(hypotheses, references)["bleu"] > 40, (beam, hypotheses[:5])


def test_resume_is_bit_exact(corpus, tmp_path):
    def losses(out):
        return [(e["step"], e["loss"]) for e in map(json.loads, _lines(out / "metrics.jsonl"))
                if e["split"] == "train"]

    data = _data(corpus, batch_size=64)          # 8 steps an epoch: stop in the first,
    tr.train_translator(data, MODEL, _train_cfg(max_steps=12, log_every=2), tmp_path / "a",
                        log=lambda *_: None)    # resume across the reshuffle
    tr.train_translator(data, MODEL, _train_cfg(max_steps=6, log_every=2), tmp_path / "b",
                        log=lambda *_: None)
    tr.train_translator(None, None, None, tmp_path / "b", resume=True,
                        train_overrides={"max_steps": 12}, log=lambda *_: None)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _ in a] == [s for s, _ in b] and a[-1][0] == 12
    assert a == b                                                   # same floats, bit for bit
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()


def test_max_length_skips_long_training_pairs_and_says_so(corpus, tmp_path):
    messages = []
    tr.train_translator(_data(corpus, max_length=4), MODEL, _train_cfg(max_steps=1),
                        tmp_path / "m", log=messages.append)
    # pairs of 4+ words are 5+ tokens with <eos>
    longer = sum(len(s.split()) + 1 > 4 for s in _lines(corpus / "train.de"))
    assert longer > 0
    said = [m for m in messages if "skipped" in m]
    assert len(said) == 1 and "train.de" in said[0] and "train.en" in said[0]
    assert said[0].endswith(f": skipped {longer} of 480 pairs longer than 4 tokens (max_length)")


def test_max_length_that_leaves_no_pair_is_an_error_naming_the_files(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"train\.de.*every pair is longer than max_length=1"):
        tr.train_translator(_data(corpus, max_length=1), MODEL, _train_cfg(max_steps=1),
                            tmp_path / "m", log=lambda *_: None)
    assert not (tmp_path / "m").exists()                  # nothing half-started


# ---- evaluation ----------------------------------------------------------------------------

def test_teacher_forced_nll_equals_sum_over_sentences(trained, corpus):
    out, _ = trained
    model, src_tok, tgt_tok, _ = tr.load_translator(out)
    pairs = read_parallel(corpus / "val.de", corpus / "val.en")
    src = src_tok.encode_lines([p.source for p in pairs])
    tgt = tgt_tok.encode_lines([p.target for p in pairs])
    total, count = tr.teacher_forced_nll(model, src, tgt, "cpu", batch_size=7)
    expected = 0.0
    with torch.no_grad():
        for s, t in zip(src, tgt):
            logits = model(torch.tensor(s)[:, None], torch.tensor([len(s)]),
                           torch.tensor([BOS_ID] + t[:-1])[:, None])[:, 0]
            expected -= float(F.log_softmax(logits.double(), -1)[torch.arange(len(t)), t].sum())
    assert count == sum(len(t) for t in tgt)
    assert total == pytest.approx(expected, rel=1e-5)


def test_evaluate_file_reports_loss_and_sacrebleu_of_the_translations(trained, corpus, tmp_path):
    out, _ = trained
    source, reference = corpus / "test_2016_flickr.de", corpus / "test_2016_flickr.en"
    m = tr.evaluate_file(out, str(source), str(reference), beam=2)
    model, src_tok, tgt_tok, _ = tr.load_translator(out)
    src = src_tok.encode_lines(_lines(source))
    total, count = tr.teacher_forced_nll(model, src, tgt_tok.encode_lines(_lines(reference)),
                                         "cpu")
    hypotheses = tr.translate_lines(out, _lines(source), beam=2)
    expected = tr.bleu_chrf(hypotheses, _lines(reference))
    assert m["loss"] == pytest.approx(total / count) and m["ppl"] == pytest.approx(
        math.exp(total / count))
    assert (m["bleu"], m["chrf"], m["sentences"], m["beam"]) == (
        expected["bleu"], expected["chrf"], 12, 2)
    # the same pairs as one TSV file
    tsv = tmp_path / "test.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in zip(_lines(source), _lines(reference))),
                   encoding="utf-8")
    m_tsv = tr.evaluate_file(out, str(tsv), beam=2)
    assert {k: m_tsv[k] for k in ("loss", "bleu", "chrf")} == {k: m[k] for k in ("loss", "bleu",
                                                                                   "chrf")}


def test_bleu_chrf_is_sacrebleu():
    import sacrebleu

    refs = ["the cat sat on the mat .", "a dog ran in the park", "it rained all day"]
    hyps = ["the cat sat on a mat .", "a dog ran into the park", "it rained all day long"]
    perfect = tr.bleu_chrf(refs, refs)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    got = tr.bleu_chrf(hyps, refs)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    assert 0 < got["bleu"] < 100 and "tok:13a" in got["signature"]


# ---- translating ---------------------------------------------------------------------------

def test_sentence_longer_than_any_training_sentence_translates(trained):
    out, _ = trained
    rng = random.Random(5)
    long_source = _pairs(rng, 1, shortest=25, longest=25)[0][0]   # training: <= 5 words
    for beam in (1, 3):
        notes = []
        text, = tr.translate_lines(out, [long_source], beam=beam, log=notes.append)
        words = text.split()
        assert 0 < len(words) <= 2 * 26 + 10
        assert set(words) <= set(TARGET_WORDS)
        assert bool(notes) == (len(words) == 2 * 26 + 10)    # a note exactly when cut


def _never_ending(out):
    """The trained model with <eos> made impossible in practice: every search hits the cap."""
    model, src_tok, tgt_tok, _ = tr.load_translator(out)
    with torch.no_grad():
        model.output.bias[EOS_ID] = -1e4
    return model, src_tok, tgt_tok


@pytest.mark.parametrize("beam", [1, 3])
def test_length_limit_cuts_and_is_reported(trained, beam):
    out, _ = trained
    model, src_tok, tgt_tok = _never_ending(out)
    for lines in (["a b", "c d"], ["c d e f"]):                  # 3 tokens each; 5
        sources = src_tok.encode_lines(lines)
        notes = []
        texts = tr.translate_ids(model, sources, tgt_tok, beam=beam, log=notes.append)
        assert [len(t.split()) for t in texts] == [2 * len(s) + 10 for s in sources]
        assert notes == [f"note: {len(lines)} translation(s) reached the length limit "
                         f"(2 x source + 10 tokens) and were cut there"]
        notes.clear()
        tr.translate_ids(tr.load_translator(out)[0], sources, tgt_tok, beam=beam,
                         log=notes.append)
        assert notes == []                                    # the trained model ends at <eos>


def test_greedy_length_limit_does_not_depend_on_the_batch(trained):
    out, _ = trained
    model, src_tok, tgt_tok = _never_ending(out)
    short, long = src_tok.encode_lines(["a b", "a b c d e f g h a b c d"])
    alone = tr.translate_ids(model, [short], tgt_tok, beam=1)
    together = tr.translate_ids(model, [short, long], tgt_tok, beam=1)
    assert len(alone[0].split()) == 2 * len(short) + 10
    assert together[0] == alone[0]


def test_greedy_and_beam_one_give_the_same_translations(trained, corpus):
    out, _ = trained
    model, src_tok, tgt_tok, _ = tr.load_translator(out)
    sources = src_tok.encode_lines(_lines(corpus / "val.de"))
    greedy = tr.translate_ids(model, sources, tgt_tok, beam=1, batch_size=6)
    from rnnkit.generate import beam_search
    for source, text in zip(sources, greedy):
        (ids, _), = beam_search(tr.TranslationSearch(model, source), [BOS_ID], beam_size=1,
                                max_tokens=tr.max_output_length(len(source)), eos_id=EOS_ID)
        assert text == tgt_tok.decode(ids[:-1] if ids[-1] == EOS_ID else ids).strip()


def test_plot_attention_writes_a_png_of_the_greedy_translation(trained, tmp_path):
    out, _ = trained
    path = tmp_path / "attention.png"
    text = tr.plot_attention(out, "a b c d", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert text == tr.translate_lines(out, ["a b c d"], beam=1)[0]


def test_loading_checks_the_model_against_its_tokenizers(trained, tmp_path):
    out, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.rglob("*"):
        if f.is_file():
            (copy / f.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(out)).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["model"]["target_vocab_size"] += 1
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vocabulary sizes do not match"):
        tr.load_translator(copy)
    assert isinstance(tr.load_translator(out)[0], Seq2Seq)

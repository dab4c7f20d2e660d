"""N-best rescoring (rnnkit.tasks.rescore, `rnnkit rescore`): the three formats read alike;
the combination of hand-set scores gives the golden ranking and TSV; rnnkit's score of each
hypothesis equals `score_lines` of it alone (reset) or from the previous 1-best's state
(carry); tuning finds the weights that fix a hand-made list; bad lines name file and line."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import expect_cli_error, run_cli
from rnnkit.tasks import lm, rescore
from rnnkit.tasks.rescore import Hypothesis, NBest
from tiny_data import write_lines


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("rescore")
    text = write_lines(root / "text.txt", ["the cat sat on a mat", "the dog ran on a log",
                                           "a cat sat on the mat"] * 30)
    out = root / "lm"
    lm.train_lm(lm.LMDataConfig(data=text, level="word", batch_size=4, bptt=10),
                {"hidden_size": 16, "num_layers": 1},
                {"max_steps": 100, "optimizer": "adam", "lr": 0.02}, out, log=lambda *_: None)
    return out


def test_the_three_formats_read_alike(tmp_path):
    rnnlm = write_lines(tmp_path / "a.txt", ["1 the cat", "1 a cat sat", "2 the dog"])
    kaldi = write_lines(tmp_path / "b.txt", ["1-1 the cat", "1-2 a cat sat", "2-1 the dog"])
    tsv = write_lines(tmp_path / "c.tsv", ["1\t-3.5\t-2\tthe cat", "1\t-1\t\ta cat sat",
                                           "2\t0\t-1.25\tthe dog"])
    for path in (rnnlm, kaldi, tsv):
        lists = rescore.read_nbest(path)
        assert [(n.id, [h.text for h in n.hypotheses]) for n in lists] == [
            ("1", ["the cat", "a cat sat"]), ("2", ["the dog"])]
    scored = rescore.read_nbest(tsv)
    assert [(h.score, h.lm_score) for n in scored for h in n.hypotheses] == [
        (-3.5, -2.0), (-1.0, None), (0.0, -1.25)]


def test_the_combination_of_known_scores_is_golden():
    lists = [NBest("u1", [Hypothesis("a b", 1, score=-10.0, lm_score=-4.0, rnn=-3.0),
                          Hypothesis("a c", 2, score=-9.0, lm_score=-6.0, rnn=-8.0),
                          Hypothesis("b b", 3, score=-12.0, lm_score=None, rnn=-1.0)])]
    # combined = score + 0.5 * (0.25 * rnn + 0.75 * lm_score); rnn alone without lm_score
    assert rescore.rescored_lines(lists, 0.5, 0.25) == [
        "u1\t1\t-11.8750\t-3.0000\t-10.0000\t-4.0000\ta b",
        "u1\t2\t-12.2500\t-8.0000\t-9.0000\t-6.0000\ta c",
        "u1\t3\t-12.5000\t-1.0000\t-12.0000\t\tb b"]
    assert rescore.one_best(lists, 0.5, 0.25) == [("u1", "a b")]
    assert rescore.one_best(lists, 0.0, 0.25) == [("u1", "a c")]      # the list's own best
    assert rescore.one_best(lists, 3.0, 1.0) == [("u1", "b b")]       # rnnkit's best


def test_rnnkit_scores_are_the_log10_probabilities_of_score_lines(model, tmp_path):
    texts = ["the cat sat on a mat", "the cat sat", "a dog ran on the mat", "dog a"]
    path = write_lines(tmp_path / "nb.txt", [f"u1 {t}" for t in texts[:2]] +
                       [f"u2 {t}" for t in texts[2:]])
    scored = rescore.score_nbest(model, rescore.read_nbest(path))
    alone = lm.score_lines(model, write_lines(tmp_path / "plain.txt", texts))
    got = [h.rnn for n in scored for h in n.hypotheses]
    want = [r["logprob"] / math.log(10) for r in alone]
    assert got == pytest.approx(want, rel=1e-5)


def test_carry_starts_each_list_from_the_previous_one_best(model, tmp_path):
    path = write_lines(tmp_path / "nb.txt", ["u1 the cat sat", "u1 a mat",
                                             "u2 the dog ran", "u2 on a mat"])
    scored = rescore.score_nbest(model, rescore.read_nbest(path), context="carry")
    first = scored[0]
    best = first.hypotheses[rescore.best_index(first, 1.0, 1.0)].text
    net, tokenizer, _ = lm.load_lm(model)
    with torch.no_grad():        # the 1-best's state; as in a stream, its <eos> is next input
        state, end = None, tokenizer.line_end_id
        ids = tokenizer.encode_line(best)
        for token in [end] + ids[:-1]:
            _, state = net.step(torch.tensor([token]), state)
        for h in scored[1].hypotheses:
            ids, s, total = tokenizer.encode_line(h.text), state, 0.0
            for prev, nxt in zip([end] + ids[:-1], ids):
                log_probs, s = net.step(torch.tensor([prev]), s)
                total += float(log_probs[0, nxt])
            assert h.rnn == pytest.approx(total / math.log(10), rel=1e-5)
    reset = rescore.score_nbest(model, rescore.read_nbest(path))
    assert [h.rnn for h in reset[0].hypotheses] == pytest.approx(
        [h.rnn for h in first.hypotheses], rel=1e-6)      # the first list has no history
    assert [h.rnn for h in reset[1].hypotheses] != pytest.approx(
        [h.rnn for h in scored[1].hypotheses], rel=1e-6)


def test_tune_picks_weights_that_fix_the_list(model, tmp_path, capsys):
    """The list's own scores prefer a wrong hypothesis; the language model knows better."""
    dev = write_lines(tmp_path / "dev.tsv", ["u1\t-1\t\tmat the on sat cat the",
                                             "u1\t-1.5\t\tthe cat sat on a mat"])
    ref = write_lines(tmp_path / "ref.txt", ["u1 the cat sat on a mat"])
    lists = rescore.score_nbest(model, rescore.read_nbest(dev))
    assert lists[0].hypotheses[1].rnn - lists[0].hypotheses[0].rnn > 0.5 / 0.1
    tuned = rescore.tune(lists, rescore.read_references(ref), ref)
    assert tuned["wer"] == 0 and tuned["lm_weight"] > 0
    code, out, err = run_cli(["rescore", model, dev, "--tune", dev, ref, "--reference", ref],
                             capsys)
    assert code == 0, err
    assert out == "u1 the cat sat on a mat\n"
    assert "WER against" in err and "0.00% rescored" in err


@pytest.mark.parametrize(("lines", "fragments"), [
    (["u1\t-1\tthe cat"], ["line 1", "3 tab-separated columns"]),
    (["u1\tx\t\tthe cat"], ["line 1", "score 'x' is not a number"]),
    (["u1\tnan\t\tthe cat"], ["line 1", "not finite"]),
    (["u1 the cat", "u2 a dog", "u1 the mat"], ["line 3", "'u1' again", "line 1"]),
    (["u1"], ["line 1", "empty hypothesis"]),
    (["u1-1 the cat", "u1-x the dog", "--format", "kaldi"], ["line 2", "Kaldi"]),
])
def test_malformed_lists_name_file_and_line(model, tmp_path, capsys, lines, fragments):
    options = lines[lines.index("--format"):] if "--format" in lines else []
    path = write_lines(tmp_path / "bad.txt", lines[:len(lines) - len(options)])
    expect_cli_error(["rescore", model, path, *options], capsys, "bad.txt", *fragments)


def test_auto_format_keeps_rnnlm_keys_that_look_like_kaldi(tmp_path):
    """RNNLM lists whose IDs end in -digits: the repeated key says which format it is."""
    path = write_lines(tmp_path / "nb.txt", ["sent-1 the cat", "sent-1 a cat", "sent-2 a dog",
                                             "sent-2 the dog"])
    assert [(n.id, len(n.hypotheses)) for n in rescore.read_nbest(path)] == [
        ("sent-1", 2), ("sent-2", 2)]


def test_rescoring_reads_in_bounded_batches_with_the_same_scores(model, tmp_path,
                                                                 monkeypatch):
    """The hypotheses go through score_texts' bounded batches: squeezed to windows of 3
    tokens, every score (reset and carry) is unchanged."""
    from rnnkit.tasks import common

    path = write_lines(tmp_path / "nb.txt", [f"u{k} the cat sat on a mat" for k in (1, 1)] +
                       ["u2 a dog ran on the log", "u2 the dog"])
    wide = [rescore.score_nbest(model, rescore.read_nbest(path), context=c)
            for c in ("reset", "carry")]
    vocab = lm.load_lm(model)[0].config.vocab_size
    monkeypatch.setattr(common, "BATCH_LOGITS", 3 * vocab)
    for lists, context in zip(wide, ("reset", "carry")):
        narrow = rescore.score_nbest(model, rescore.read_nbest(path), context=context)
        assert [h.rnn for n in narrow for h in n.hypotheses] == pytest.approx(
            [h.rnn for n in lists for h in n.hypotheses], rel=1e-5)


def test_bad_weights_and_options_are_refused(model, tmp_path, capsys):
    path = write_lines(tmp_path / "nb.txt", ["u1 the cat"])
    expect_cli_error(["rescore", model, path, "--rnn-weight", "1.5"], capsys, "--rnn-weight")
    expect_cli_error(["rescore", model, path, "--lm-weight", "-1"], capsys, "--lm-weight")
    expect_cli_error(["rescore", model, path, "--context", "carry", "--tune", path, path],
                     capsys, "--tune", "--context reset")
    expect_cli_error(["rescore", model, path, "--reference", write_lines(
        tmp_path / "r.txt", ["u9 x"])], capsys, "r.txt", "'u1'")

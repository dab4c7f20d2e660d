"""Non-finite numbers never crash: perplexity cannot overflow, and an exploding run stops
with a clear message that says whether a good checkpoint exists."""

import math

import pytest

from conftest import expect_cli_error, run_cli
from rnnkit.tasks import lm
from rnnkit.train.metrics import perplexity

TEXT = "\n".join(["the cat sat on the mat", "the dog sat on the log"] * 40) + "\n"
SMALL = ["--level", "char", "--hidden", "16", "--layers", "1", "--batch-size", "4",
         "--bptt", "16", "--sample", "0", "--no-progress"]


def test_perplexity_is_inf_instead_of_overflowing():
    assert perplexity(0.0) == 1.0
    assert perplexity(709.0) == pytest.approx(math.exp(709.0))
    assert perplexity(710.0) == math.inf
    assert perplexity(1e300) == math.inf
    assert perplexity(math.inf) == math.inf
    assert math.isnan(perplexity(math.nan))
    assert f"{perplexity(800.0):.2f}" == "inf"


def test_describe_says_inf_plainly():
    line = lm.describe_metrics({"loss": 800.0, "ppl": perplexity(800.0)})
    assert "ppl inf" in line


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_huge_lr_stops_with_a_message_and_no_traceback(tmp_path, corpus, capsys):
    code, _, err = run_cli(["train", "lm", "--data", corpus, "--out", tmp_path / "m",
                            "--lr", "1e30", "--max-steps", "40", "--eval-every", "2", *SMALL],
                           capsys)
    assert "Traceback" not in err and "OverflowError" not in err
    assert code == 2, err
    assert "stopped" in err and "try a lower --lr" in err
    assert "perplexity inf" in err and "No model was saved yet" in err
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_infinite_lr_before_any_checkpoint_says_no_model_was_saved(tmp_path, corpus, capsys):
    out = tmp_path / "m"
    err = expect_cli_error(["train", "lm", "--data", corpus, "--out", out, "--lr", "inf",
                            "--max-steps", "20", *SMALL], capsys, "stopped",
                           "No model was saved yet")
    assert "last good checkpoint" not in err
    assert not (out / "model.safetensors").exists()


def test_evaluating_an_exploded_model_reports_inf():
    """The task's own figures go through perplexity(): a loss past 709 nats is inf."""
    class Tokenizer:
        unk_id, level = 1, "bpe"
    m = lm._metrics(Tokenizer(), 800.0 * 10, 10, [2] * 10, 5)
    assert m["ppl"] == math.inf and m["word_ppl"] == math.inf
    assert "ppl inf" in lm.describe_metrics(m)

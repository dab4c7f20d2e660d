"""Int8 inference (rnnkit.quantize): PyTorch's dynamic quantisation of a language model's
output layer and of LSTM/GRU recurrent layers. The int8 model is compared with the float
model it came from: close (within the stated bound) but not identical (it is quantised),
the same through every path (sequence, step, padded batch); a small trained model's
perplexity moves by less than the bound the README states."""

from __future__ import annotations

import pytest
import torch

from conftest import expect_cli_error, run_cli
from rnnkit.cells import cell_names
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.quantize import Int8FullSoftmax, Int8Recurrent, quantize_lm
from rnnkit.tasks import classifier, lm
from tiny_data import tiny_files

PPL_BOUND = 0.02        # |int8 perplexity / float perplexity - 1| on the trained tiny model


def _model(cell: str, **options) -> LanguageModel:
    torch.manual_seed(0)
    config = LMConfig(vocab_size=40, hidden_size=24, num_layers=2, cell=cell, **options)
    return LanguageModel(config, counts=list(range(40, 0, -1))).eval()


def _tokens():
    return torch.randint(0, 40, (9, 3), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lstm_and_gru_layers_become_int8_and_stay_close(cell):
    model = _model(cell)
    int8, described = quantize_lm(model)
    assert all(isinstance(layer, Int8Recurrent) for layer in int8.layers)
    assert isinstance(int8.head, Int8FullSoftmax)
    assert "recurrent layers int8 (2)" in described and "output layer int8" in described
    x = _tokens()
    with torch.no_grad():
        want = model.log_probs(model(x)[0])
        got = int8.log_probs(int8(x)[0])
    difference = (got - want).abs().max().item()
    assert 0 < difference < 0.05                   # quantised, and close


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_step_and_padded_batch_follow_the_float_model(cell):
    """Dynamic quantisation scales each product's activations by their own range, so the
    step and padded paths are compared with the float model's same path, within the
    quantisation error."""
    model = _model(cell)
    int8, _ = quantize_lm(model)
    x = _tokens()
    with torch.no_grad():
        state, state8 = None, None
        for t in range(x.shape[0]):
            want, state = model.step(x[t], state)
            got, state8 = int8.step(x[t], state8)
            torch.testing.assert_close(got, want, atol=0.05, rtol=0)
        lengths = torch.tensor([9, 4, 6])
        want, _ = model(x, None, lengths=lengths)
        got, _ = int8(x, None, lengths=lengths)
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(got[:n, b], want[:n, b], atol=0.05, rtol=0)
            assert not got[n:, b].any()                  # padding stays zero


def test_cells_without_an_int8_kernel_keep_float_layers_and_say_so():
    others = [name for name in cell_names() if name not in ("lstm", "gru")]
    assert "lstm_peephole" in others and "layernorm_gru" in others
    for cell in others:
        model = _model(cell)
        int8, described = quantize_lm(model)
        assert not any(isinstance(layer, Int8Recurrent) for layer in int8.layers), cell
        assert f"recurrent layers float (PyTorch has no int8 kernel for cell {cell!r})" \
            in described
        with torch.no_grad():
            hidden, _ = model(_tokens())
            torch.testing.assert_close(int8(_tokens())[0], hidden)   # layers untouched


def test_heads_the_class_softmax_stays_float_and_the_original_is_untouched():
    model = _model("lstm", softmax="class", num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    int8, described = quantize_lm(model)
    assert "output layer float (class softmax)" in described
    adaptive, text = quantize_lm(_model("gru", softmax="adaptive", adaptive_cutoffs=(10, 20)))
    assert "output layer int8" in text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    files = tiny_files(root, n=60, seed=4)
    out = root / "lm"
    lm.train_lm(lm.LMDataConfig(data=files["text"], level="word"),
                {"hidden_size": 32, "num_layers": 2}, {"max_steps": 60, "lr": 5.0}, out,
                log=lambda *_: None)
    return out, files


def test_a_trained_model_keeps_its_perplexity_within_the_bound(trained):
    out, files = trained
    m = lm.evaluate_file(out, files["text"], int8=True)
    float_ppl = lm.evaluate_file(out, files["text"])["ppl"]
    assert m["ppl"] != float_ppl                          # the int8 model's own figure
    assert abs(m["ppl"] / float_ppl - 1) < PPL_BOUND


def test_int8_score_and_greedy_generation_follow_the_int8_model(trained):
    out, files = trained
    rows8 = lm.score_lines(out, files["text"], int8=True)
    rows = lm.score_lines(out, files["text"])
    assert [r["tokens"] for r in rows8] == [r["tokens"] for r in rows]
    for a, b in zip(rows8, rows):
        assert a["logprob"] == pytest.approx(b["logprob"], rel=PPL_BOUND)
    assert any(a["logprob"] != b["logprob"] for a, b in zip(rows8, rows))
    model, _, _ = lm.load_lm(out, int8=True)
    assert isinstance(model.layers[0], Int8Recurrent)
    logged = []
    lm.generate(out, "the", max_tokens=3, greedy=True, int8=True, log=logged.append)
    assert logged == ["int8: output layer int8, recurrent layers int8 (2), embedding float"]


def test_the_cli_prints_the_change_and_refuses_other_tasks(trained, tmp_path, capsys):
    out, files = trained
    code, stdout, err = run_cli(["eval", str(out), "--data", files["text"], "--int8"],
                                capsys)
    assert code == 0, err
    assert "int8: output layer int8, recurrent layers int8 (2)" in stdout
    assert "int8 changes it by" in stdout
    model = tmp_path / "classifier"
    classifier.train_classifier(
        classifier.ClassifierDataConfig(train=files["labelled"], valid=files["labelled"]),
        {"hidden_size": 8}, {"max_steps": 1}, model, log=lambda *_: None)
    expect_cli_error(["eval", str(model), "--data", files["labelled"], "--int8"], capsys,
                     "--int8", "classifier")

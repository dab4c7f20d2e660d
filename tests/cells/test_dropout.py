"""Zoneout and variational recurrent dropout (rnnkit.cells.dropout) against references
written from the papers' equations in plain torch, with the masks drawn in the same order
from the same seed; gradcheck of the training-mode hand backward; evaluation mode; errors.
"""

import pytest
import torch

import rnnkit
from rnnkit.cells import Cell, make_cell
from rnnkit.check import check_cell

T, B, I, H = 7, 3, 4, 5


def _lstm_step(x, h, c, w_ih, w_hh, b):
    i, f, g, o = (x @ w_ih.T + h @ w_hh.T + b).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _zoneout_reference(layer, x, p, training, recurrent_dropout=0.0):
    """Krueger et al.: s_t = d ⊙ s_{t-1} + (1 − d) ⊙ s̃_t, d ~ Bernoulli(p) per unit (h, then
    c, at every step); the expectation p s_{t-1} + (1 − p) s̃_t in evaluation. With
    ``recurrent_dropout`` the cell reads h_{t-1} ⊙ m, m drawn once, before the first step."""
    w_ih, w_hh = layer.weight_ih_l0, layer.weight_hh_l0
    b = layer.bias_ih_l0 + layer.bias_hh_l0
    h = c = x.new_zeros(B, H)
    mask = torch.ones_like(h)
    if training and recurrent_dropout:
        mask = torch.bernoulli(torch.full_like(h, 1 - recurrent_dropout)) / (1 - recurrent_dropout)
    outs = []
    for t in range(T):
        h_new, c_new = _lstm_step(x[t], h * mask, c, w_ih, w_hh, b)
        if training:
            d_h = torch.bernoulli(torch.full_like(h_new, p))
            d_c = torch.bernoulli(torch.full_like(c_new, p))
        else:
            d_h = d_c = torch.full_like(h_new, p)
        h, c = d_h * h + (1 - d_h) * h_new, d_c * c + (1 - d_c) * c_new
        outs.append(h)
    return torch.stack(outs), h, c


@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_zoneout_lstm_matches_the_paper_equations_and_gradients(training):
    layer = rnnkit.RecurrentStack(I, H, cell="lstm", cell_options={"zoneout": 0.3},
                                  backend="bptt", dtype=torch.float64).train(training)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(T, B, H, dtype=torch.float64)
    results = []
    for run in ("rnnkit", "reference"):
        torch.manual_seed(7)
        if run == "rnnkit":
            out, (h, c) = layer(x)
            h, c = h[0], c[0]
        else:
            out, h, c = _zoneout_reference(layer, x, 0.3, training)
        loss = (out * weights).sum() + (h * c).sum()
        results.append([out, h, c, *torch.autograd.grad(loss, [x, *layer.parameters()])])
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    if training:                                # some units kept, some updated
        kept = (results[0][0][1:] == results[0][0][:-1]).double().mean()
        assert 0.1 < kept < 0.5


def test_zoneout_and_recurrent_dropout_together_match_the_equations():
    """Both noises at once: the wrapped cell is in training mode too (its mask is drawn)."""
    options = {"zoneout": 0.3, "recurrent_dropout": 0.5}
    layer = rnnkit.RecurrentStack(I, H, cell="lstm", cell_options=options, backend="bptt",
                                  dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(5)
    out, _ = layer(x)
    torch.manual_seed(5)
    ref, _, _ = _zoneout_reference(layer, x, 0.3, True, recurrent_dropout=0.5)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.manual_seed(5)
    ref_without_mask, _, _ = _zoneout_reference(layer, x, 0.3, True)
    assert not torch.allclose(out, ref_without_mask)


@pytest.mark.parametrize("name", sorted(rnnkit.cell_names()))
@pytest.mark.parametrize("options", [{"zoneout": 0.1}, {"recurrent_dropout": 0.1}],
                         ids=["zoneout", "recurrent_dropout"])
def test_noise_keeps_every_declaration_of_the_cell(name, options):
    plain = make_cell(name)
    try:
        noisy = make_cell(name, **options)
    except ValueError:                          # a cell that refuses recurrent dropout
        assert not plain.h_prev_in_product_only
        return
    for key in Cell.DECLARATIONS:
        if key != "name":
            assert getattr(noisy, key) == getattr(plain, key), key
    assert noisy.weight_hh_shape(4) == plain.weight_hh_shape(4)
    assert noisy.extra_param_shapes(4) == plain.extra_param_shapes(4)
    assert noisy.recurrent_weight_limit(100) == plain.recurrent_weight_limit(100)


def test_input_feeding_decoder_refuses_recurrent_dropout():
    from rnnkit.models.seq2seq import Seq2SeqConfig

    with pytest.raises(ValueError, match="recurrent_dropout: with input_feeding the decoder"):
        Seq2SeqConfig(source_vocab_size=5, target_vocab_size=5, cell="lstm",
                      cell_options={"recurrent_dropout": 0.2}, input_feeding=True)


def test_recurrent_dropout_rnn_matches_the_paper_equations_and_gradients():
    """Gal & Ghahramani: h_t = tanh(U x_t + W (h_{t-1} ⊙ m) + b), one mask m per sequence."""
    p = 0.4
    layer = rnnkit.RecurrentStack(I, H, cell="rnn_tanh", cell_options={"recurrent_dropout": p},
                                  backend="bptt", dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(T, B, H, dtype=torch.float64)
    results = []
    for run in ("rnnkit", "reference"):
        torch.manual_seed(3)
        if run == "rnnkit":
            out, h = layer(x)
            h = h[0]
        else:
            b = layer.bias_ih_l0 + layer.bias_hh_l0
            h, outs, mask = x.new_zeros(B, H), [], None
            for t in range(T):
                if mask is None:                # drawn once, at the first step
                    mask = torch.bernoulli(torch.full_like(h, 1 - p)) / (1 - p)
                h = torch.tanh(x[t] @ layer.weight_ih_l0.T + (h * mask) @ layer.weight_hh_l0.T + b)
                outs.append(h)
            out = torch.stack(outs)
        loss = (out * weights).sum() + (h * h).sum()
        results.append([out, h, *torch.autograd.grad(loss, [x, *layer.parameters()])])
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "options"), [
    ("lstm", {"zoneout": 0.2}), ("gru", {"zoneout": 0.3}), ("gru_reset_before", {"zoneout": 0.5}),
    ("rnn_tanh", {"recurrent_dropout": 0.3}), ("lstm", {"recurrent_dropout": 0.3}),
    ("lstm_peephole", {"recurrent_dropout": 0.3, "zoneout": 0.1})])
def test_training_mode_hand_backward_passes_gradcheck(name, options):
    """Deep, bidirectional, variable lengths, the same masks for engine and autograd."""
    row = check_cell(make_cell(name, **options))
    assert row.ok, row


def test_evaluation_recurrent_dropout_is_the_plain_cell_and_masks_follow_the_rng(monkeypatch):
    # the same engine: the Python one (a wrapped cell never runs the compiled loops)
    monkeypatch.setenv("RNNKIT_COMPILED", "0")
    noisy = rnnkit.RecurrentStack(I, H, 2, cell="lstm", cell_options={"recurrent_dropout": 0.5,
                                                                        "zoneout": 0.0})
    plain = rnnkit.RecurrentStack(I, H, 2, cell="lstm", backend="bptt")
    plain.load_state_dict(noisy.state_dict())
    x = torch.randn(T, B, I)
    torch.testing.assert_close(noisy.eval()(x)[0], plain.eval()(x)[0], rtol=0, atol=0)
    noisy.train()
    state = torch.get_rng_state()
    first = noisy(x)[0]
    torch.set_rng_state(state)                  # what a resumed run restores
    torch.testing.assert_close(noisy(x)[0], first, rtol=0, atol=0)
    assert not torch.equal(noisy(x)[0], first)  # fresh masks at the next call


def test_noise_options_are_checked():
    with pytest.raises(ValueError, match=r"recurrent_dropout: the cell GRUCell\(reset_after=True\) "
                                         r"carries h_\{t-1\} outside its recurrent product"):
        make_cell("gru", recurrent_dropout=0.2)
    with pytest.raises(ValueError, match=r"zoneout: expected a number in \[0, 1\), got 1.5"):
        make_cell("lstm", zoneout=1.5)

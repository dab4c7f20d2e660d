"""minLSTM cell (rnnkit.cells.min_lstm): hand backward vs autograd and gradcheck, the
paper's equations, golden numbers, normalised gates summing to 1, the parallel-scan
coefficients."""

import math

import pytest
import torch

import rnnkit
from conftest import (assert_all_close, assert_stack_follows_equations, fill_gates,
                      outputs_from_scan_coefficients, step_backward_and_autograd)
from rnnkit.cells.min_lstm import MinLSTMCell
from rnnkit.check import check_cell


def test_step_backward_matches_autograd():
    hand, reference, names = step_backward_and_autograd(MinLSTMCell())
    assert names == ["dh_prev", "dxw"]                      # no recurrent weight to differentiate
    assert_all_close(hand, reference, names, rtol=1e-10, atol=1e-12)


def test_gradcheck_float64_deep_bidirectional_lengths():
    row = check_cell(MinLSTMCell())
    assert row.ok and row.gradcheck and row.bptt_vs_autograd < 1e-10, row


def _paper_step(x, h, p):
    """Feng et al. (2024), minLSTM: f = σ(Linear_f(x)), i = σ(Linear_i(x)),
    h̃ = Linear_h(x), f' = f / (f + i), i' = i / (f + i), h_t = f' ⊙ h_{t-1} + i' ⊙ h̃."""
    H = h.shape[0]
    W, b = p["weight_ih"], p["bias_ih"]
    f = torch.sigmoid(W[:H] @ x + b[:H])
    i = torch.sigmoid(W[H:2 * H] @ x + b[H:2 * H])
    h_tilde = W[2 * H:] @ x + b[2 * H:]
    return f / (f + i) * h + i / (f + i) * h_tilde


@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_stack_matches_the_papers_equations_under_autograd(backend):
    assert_stack_follows_equations("min_lstm", _paper_step, backend)


@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_golden_constant_weights(backend):
    """f = σ(ln 3) = 3/4, i = σ(ln 3 · x), h̃ = 2x, h_0 = 1, worked out by hand: x = 1 gives
    i = 3/4, f' = i' = 1/2, h_1 = 1/2 + 1 = 1.5; x = −1 gives i = 1/4, f' = 3/4, i' = 1/4,
    h_2 = 3/4 · 1.5 − 1/4 · 2 = 0.625."""
    layer = rnnkit.RecurrentStack(1, 2, cell="min_lstm", backend=backend, dtype=torch.float64)
    fill_gates(layer.weight_ih_l0, [0.0, math.log(3), 2.0])
    fill_gates(layer.bias_ih_l0, [math.log(3), 0.0, 0.0])
    x = torch.tensor([[[1.0]], [[-1.0]]], dtype=torch.float64)              # (T=2, B=1, 1)
    out, h_n = layer(x, torch.ones(1, 1, 2, dtype=torch.float64))
    want = torch.tensor([1.5, 0.625], dtype=torch.float64).view(2, 1, 1).expand(2, 1, 2)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, want[-1:], rtol=1e-12, atol=1e-12)


def _step_cache(xw):
    H = xw.shape[1] // 3
    _, cache = MinLSTMCell().step_forward(xw, (torch.zeros(xw.shape[0], H),), None, None)
    return cache


def test_normalised_gates_sum_to_one_and_are_the_papers_ratios():
    xw = 4 * torch.randn(50, 3 * 6, dtype=torch.float64)
    cache = _step_cache(xw)
    f_n, i_n = cache.normalised.chunk(2, 1)
    torch.testing.assert_close(f_n + i_n, torch.ones_like(f_n), rtol=0, atol=1e-15)
    f, i = xw[:, :6].sigmoid(), xw[:, 6:12].sigmoid()
    torch.testing.assert_close(f_n, f / (f + i), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(i_n, i / (f + i), rtol=1e-12, atol=1e-15)


def test_normalised_gates_stay_finite_where_both_gates_underflow():
    """f = i = σ(−120) is 0 in float32, where f / (f + i) is 0/0; the log-space form gives
    the limit 1/2."""
    xw = torch.tensor([[-120.0, -120.0, 1.0], [-120.0, -200.0, 1.0]])      # H = 1
    f = xw[:, 0].sigmoid()
    assert (f == 0).all() and torch.isnan(f / (f + xw[:, 1].sigmoid())).all()
    f_n, i_n = _step_cache(xw).normalised.chunk(2, 1)
    torch.testing.assert_close(f_n.squeeze(1), torch.tensor([0.5, 1.0]))   # i ≪ f in row 2
    torch.testing.assert_close((f_n + i_n).squeeze(1), torch.ones(2))


def test_forget_bias_sets_the_forget_gate():
    layer = rnnkit.RecurrentStack(3, 4, cell="min_lstm", forget_bias=1.0, init="orthogonal")
    torch.testing.assert_close(layer.bias_ih_l0.detach()[:4], torch.ones(4))
    assert "bias_hh_l0" not in dict(layer.named_parameters())


def test_scan_coefficients_reproduce_the_steps():
    """h_t = a_t ⊙ h_{t-1} + b_t with (a, b) = (f', i' ⊙ h̃) from the inputs alone."""
    layer = rnnkit.RecurrentStack(3, 4, cell="min_lstm", dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(outputs_from_scan_coefficients(layer, x), layer(x)[0],
                               rtol=1e-12, atol=1e-12)

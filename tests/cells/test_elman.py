"""Elman cell (rnnkit.cells.elman): hand backward vs autograd, golden numbers, torch.nn.RNNCell."""

import math

import pytest
import torch

import rnnkit
from conftest import assert_all_close, fill_gates, step_backward_and_autograd
from rnnkit.bptt import input_projection
from rnnkit.cells import ElmanCell

NONLINEARITIES = ["tanh", "relu", "sigmoid"]


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_step_backward_matches_autograd(nonlinearity):
    hand, reference, names = step_backward_and_autograd(ElmanCell(nonlinearity))
    assert_all_close(hand, reference, names, rtol=1e-10, atol=1e-12)


def _sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


HAND_F = {"tanh": math.tanh, "relu": lambda a: max(a, 0.0), "sigmoid": _sigmoid}


# every backend that computes the nonlinearity (sigmoid has no fused kernel)
GOLDEN_CASES = [(f, backend) for f in NONLINEARITIES for backend in ("bptt", "autograd", "native")
                if not (f == "sigmoid" and backend == "native")]


@pytest.mark.parametrize(("nonlinearity", "backend"), GOLDEN_CASES)
def test_golden_constant_weights(nonlinearity, backend):
    """h_t = f(U x_t + b_ih + b_hh + W h_{t-1}), H = 2 equal units, worked out by hand."""
    rnn = rnnkit.RNN(1, 2, nonlinearity=nonlinearity, backend=backend, dtype=torch.float64)
    fill_gates(rnn.weight_ih_l0, [0.5])
    fill_gates(rnn.weight_hh_l0, [0.1])
    fill_gates(rnn.bias_ih_l0, [0.2])
    fill_gates(rnn.bias_hh_l0, [-0.3])
    x = torch.tensor([[[1.0], [-1.0]], [[0.5], [0.5]]], dtype=torch.float64)   # (T=2, B=2, 1)
    h0 = torch.full((1, 2, 2), 0.4, dtype=torch.float64)

    f = HAND_F[nonlinearity]
    expected = []
    for b in range(2):
        h, hs = 0.4, []
        for t in range(2):
            # each unit sees both units of h_{t-1} through weight 0.1: 0.1 * (h + h)
            h = f(0.5 * x[t, b, 0].item() + 0.2 - 0.3 + 0.1 * 2 * h)
            hs.append(h)
        expected.append(hs)
    want = torch.tensor(expected, dtype=torch.float64).t().unsqueeze(-1).expand(2, 2, 2)

    out, h_n = rnn(x, h0)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, want[-1:], rtol=1e-12, atol=1e-12)
    if nonlinearity == "relu":
        assert (out[0, 1] == 0).all() and (out[1, 1] > 0).all()    # both sides of the kink


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_step_matches_torch_rnn_cell(nonlinearity):
    I, H, n = 3, 4, 5
    ref = torch.nn.RNNCell(I, H, nonlinearity=nonlinearity, dtype=torch.float64)
    x = torch.randn(n, I, dtype=torch.float64)
    h_prev = torch.randn(n, H, dtype=torch.float64)
    cell = ElmanCell(nonlinearity)
    xw = input_projection(cell, x, ref.weight_ih, ref.bias_ih, ref.bias_hh)
    (h,), _ = cell.step_forward(xw, (h_prev,), ref.weight_hh, None)
    torch.testing.assert_close(h, ref(x, h_prev), rtol=1e-12, atol=1e-12)

"""LSTM cell (rnnkit.cells.lstm): hand backward vs autograd, golden numbers, torch.nn.LSTMCell."""

import math

import pytest
import torch

import rnnkit
from conftest import assert_all_close, fill_gates, step_backward_and_autograd
from rnnkit.bptt import input_projection
from rnnkit.cells import LSTMCell


@pytest.mark.parametrize("peephole", [False, True], ids=["lstm", "lstm_peephole"])
def test_step_backward_matches_autograd(peephole):
    hand, reference, names = step_backward_and_autograd(LSTMCell(peephole=peephole))
    assert_all_close(hand, reference, names, rtol=1e-10, atol=1e-12)


def _sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


# per-gate constants, gate order i, f, g, o (peepholes i, f, o)
W_IH = (0.1, 0.2, 0.3, 0.4)
W_HH = (0.5, -0.5, 0.25, -0.25)
B_IH = (0.1, 1.0, 0.0, -0.1)
B_HH = (0.0, 0.0, 0.2, 0.3)
P = (0.3, -0.2, 0.5)
H = 2


def _hand_lstm(xs, h, c, peephole):
    """The docstring's equations on scalars; H = 2 equal units, so W h_{t-1} = 2 w h."""
    p_i, p_f, p_o = P if peephole else (0.0, 0.0, 0.0)
    hs, cs = [], []
    for x in xs:
        a_i = W_IH[0] * x + B_IH[0] + B_HH[0] + W_HH[0] * H * h
        a_f = W_IH[1] * x + B_IH[1] + B_HH[1] + W_HH[1] * H * h
        a_g = W_IH[2] * x + B_IH[2] + B_HH[2] + W_HH[2] * H * h
        a_o = W_IH[3] * x + B_IH[3] + B_HH[3] + W_HH[3] * H * h
        i = _sigmoid(a_i + p_i * c)
        f = _sigmoid(a_f + p_f * c)
        g = math.tanh(a_g)
        c = f * c + i * g
        o = _sigmoid(a_o + p_o * c)
        h = o * math.tanh(c)
        hs.append(h)
        cs.append(c)
    return hs, cs


GOLDEN_CASES = [(False, "bptt"), (False, "autograd"), (False, "native"),
                (True, "bptt"), (True, "autograd")]


@pytest.mark.parametrize(("peephole", "backend"), GOLDEN_CASES)
def test_golden_constant_weights(peephole, backend):
    lstm = rnnkit.LSTM(1, H, peephole=peephole, backend=backend, dtype=torch.float64)
    fill_gates(lstm.weight_ih_l0, W_IH)
    fill_gates(lstm.weight_hh_l0, W_HH)
    fill_gates(lstm.bias_ih_l0, B_IH)
    fill_gates(lstm.bias_hh_l0, B_HH)
    if peephole:
        fill_gates(lstm.weight_peephole_l0, P)
    xs = [[1.0, -2.0], [-0.5, 0.25]]                                   # per example, T = 2
    x = torch.tensor(xs, dtype=torch.float64).t().unsqueeze(-1)       # (T, B, 1)
    h0 = torch.full((1, 2, H), 0.4, dtype=torch.float64)
    c0 = torch.full((1, 2, H), -0.3, dtype=torch.float64)

    hand = [_hand_lstm(seq, 0.4, -0.3, peephole) for seq in xs]
    want_h = torch.tensor([hs for hs, _ in hand], dtype=torch.float64).t()  # (T, B)
    want_c = torch.tensor([cs for _, cs in hand], dtype=torch.float64).t()
    want_out = want_h.unsqueeze(-1).expand(2, 2, H)

    out, (h_n, c_n) = lstm(x, (h0, c0))
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, want_out[-1:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_n, want_c[-1:].unsqueeze(-1).expand(1, 2, H),
                               rtol=1e-12, atol=1e-12)


def test_peephole_golden_differs_from_plain():
    """The golden peephole numbers really exercise the peepholes."""
    plain, _ = _hand_lstm([1.0, -2.0], 0.4, -0.3, False)
    peep, _ = _hand_lstm([1.0, -2.0], 0.4, -0.3, True)
    assert abs(plain[-1] - peep[-1]) > 1e-3


def test_step_matches_torch_lstm_cell():
    I, n = 3, 5
    Hh = 4
    ref = torch.nn.LSTMCell(I, Hh, dtype=torch.float64)
    x = torch.randn(n, I, dtype=torch.float64)
    h_prev, c_prev = torch.randn(2, n, Hh, dtype=torch.float64)
    cell = LSTMCell()
    xw = input_projection(cell, x, ref.weight_ih, ref.bias_ih, ref.bias_hh)
    (h, c), _ = cell.step_forward(xw, (h_prev, c_prev), ref.weight_hh, None)
    want_h, want_c = ref(x, (h_prev, c_prev))
    torch.testing.assert_close(h, want_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, want_c, rtol=1e-12, atol=1e-12)


def test_zero_peepholes_equal_plain_lstm_step():
    """With weight_peephole = 0 the peephole cell is the plain cell, value and gradient."""
    n, Hh = 3, 4
    xw = torch.randn(n, 4 * Hh, dtype=torch.float64)
    state = tuple(torch.randn(n, Hh, dtype=torch.float64) for _ in range(2))
    weight_hh = torch.randn(4 * Hh, Hh, dtype=torch.float64)
    plain, _ = LSTMCell().step_forward(xw, state, weight_hh, None)
    peep, _ = LSTMCell(peephole=True).step_forward(
        xw, state, weight_hh, None, torch.zeros(3 * Hh, dtype=torch.float64))
    assert_all_close(peep, plain, ["h", "c"], rtol=1e-14, atol=1e-14)

"""GRU cells (rnnkit.cells.gru), reset after and before: hand backward vs autograd, golden
numbers, torch.nn.GRUCell."""

import math

import pytest
import torch

import rnnkit
from conftest import assert_all_close, fill_gates, step_backward_and_autograd
from rnnkit.bptt import input_projection
from rnnkit.cells import GRUCell, GRUResetBeforeCell

CELLS = {"reset_after": GRUCell, "reset_before": GRUResetBeforeCell}


@pytest.mark.parametrize("form", list(CELLS))
def test_step_backward_matches_autograd(form):
    hand, reference, names = step_backward_and_autograd(CELLS[form]())
    assert_all_close(hand, reference, names, rtol=1e-10, atol=1e-12)


def _sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


# per-gate constants, gate order r, z, n
W_IH = (0.1, 0.2, 0.3)
W_HH = (0.5, -0.4, 0.25)
B_IH = (0.1, -0.2, 0.05)
B_HH = (0.0, 0.3, -0.15)
H = 2


def _hand_gru(xs, h, reset_after):
    """The docstring's equations on scalars; H = 2 equal units, so W h_{t-1} = 2 w h."""
    hs = []
    for x in xs:
        r = _sigmoid(W_IH[0] * x + B_IH[0] + W_HH[0] * H * h + B_HH[0])
        z = _sigmoid(W_IH[1] * x + B_IH[1] + W_HH[1] * H * h + B_HH[1])
        if reset_after:
            n = math.tanh(W_IH[2] * x + B_IH[2] + r * (W_HH[2] * H * h + B_HH[2]))
        else:
            n = math.tanh(W_IH[2] * x + B_IH[2] + W_HH[2] * H * (r * h) + B_HH[2])
        h = (1 - z) * n + z * h
        hs.append(h)
    return hs


GOLDEN_CASES = [(True, "bptt"), (True, "autograd"), (True, "native"),
                (False, "bptt"), (False, "autograd")]


@pytest.mark.parametrize(("reset_after", "backend"), GOLDEN_CASES)
def test_golden_constant_weights(reset_after, backend):
    gru = rnnkit.GRU(1, H, reset_after=reset_after, backend=backend, dtype=torch.float64)
    fill_gates(gru.weight_ih_l0, W_IH)
    fill_gates(gru.weight_hh_l0, W_HH)
    fill_gates(gru.bias_ih_l0, B_IH)
    fill_gates(gru.bias_hh_l0, B_HH)
    xs = [[1.0, -2.0], [-0.5, 0.25]]                                   # per example, T = 2
    x = torch.tensor(xs, dtype=torch.float64).t().unsqueeze(-1)       # (T, B, 1)
    h0 = torch.full((1, 2, H), 0.4, dtype=torch.float64)

    want = torch.tensor([_hand_gru(seq, 0.4, reset_after) for seq in xs],
                        dtype=torch.float64).t().unsqueeze(-1).expand(2, 2, H)
    out, h_n = gru(x, h0)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, want[-1:], rtol=1e-12, atol=1e-12)


def test_golden_forms_differ():
    """The two forms' golden numbers differ, so each golden test pins its own form."""
    assert abs(_hand_gru([1.0, -2.0], 0.4, True)[-1]
               - _hand_gru([1.0, -2.0], 0.4, False)[-1]) > 1e-3


def test_reset_after_step_matches_torch_gru_cell():
    I, n, Hh = 3, 5, 4
    ref = torch.nn.GRUCell(I, Hh, dtype=torch.float64)
    x = torch.randn(n, I, dtype=torch.float64)
    h_prev = torch.randn(n, Hh, dtype=torch.float64)
    cell = GRUCell()
    xw = input_projection(cell, x, ref.weight_ih, ref.bias_ih, ref.bias_hh)
    (h,), _ = cell.step_forward(xw, (h_prev,), ref.weight_hh, ref.bias_hh)
    torch.testing.assert_close(h, ref(x, h_prev), rtol=1e-12, atol=1e-12)


def test_forms_agree_when_reset_gate_is_one():
    """With r = 1 (huge reset bias) reset-before and reset-after are the same function."""
    n, Hh = 3, 4
    xw = torch.randn(n, 3 * Hh, dtype=torch.float64)
    xw[:, :Hh] = 50.0                                              # σ(50) = 1 in float64
    h_prev = torch.randn(n, Hh, dtype=torch.float64)
    weight_hh = 0.1 * torch.randn(3 * Hh, Hh, dtype=torch.float64)
    bias_hh = torch.randn(3 * Hh, dtype=torch.float64)
    # reset-before folds bias_hh into xw; reset-after keeps it separate
    folded = xw + bias_hh
    (after,), _ = GRUCell().step_forward(xw, (h_prev,), weight_hh, bias_hh)
    (before,), _ = GRUResetBeforeCell().step_forward(folded, (h_prev,), weight_hh, None)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)

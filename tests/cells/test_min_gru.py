"""minGRU cell (rnnkit.cells.min_gru): hand backward vs autograd and gradcheck, the paper's
equations, golden numbers, no recurrent weight, the parallel-scan coefficients."""

import math

import pytest
import torch

import rnnkit
from conftest import (assert_all_close, assert_stack_follows_equations, fill_gates,
                      outputs_from_scan_coefficients, step_backward_and_autograd)
from rnnkit.cells.min_gru import MinGRUCell
from rnnkit.check import check_cell


def test_step_backward_matches_autograd():
    hand, reference, names = step_backward_and_autograd(MinGRUCell())
    assert names == ["dh_prev", "dxw"]                      # no recurrent weight to differentiate
    assert_all_close(hand, reference, names, rtol=1e-10, atol=1e-12)


def test_gradcheck_float64_deep_bidirectional_lengths():
    row = check_cell(MinGRUCell())
    assert row.ok and row.gradcheck and row.bptt_vs_autograd < 1e-10, row


def _paper_step(x, h, p):
    """Feng et al. (2024), minGRU: z = σ(Linear_z(x)), h̃ = Linear_h(x),
    h_t = (1 − z) ⊙ h_{t-1} + z ⊙ h̃."""
    H = h.shape[0]
    W, b = p["weight_ih"], p["bias_ih"]
    z = torch.sigmoid(W[:H] @ x + b[:H])
    h_tilde = W[H:] @ x + b[H:]
    return (1 - z) * h + z * h_tilde


@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_stack_matches_the_papers_equations_under_autograd(backend):
    assert_stack_follows_equations("min_gru", _paper_step, backend)


@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_golden_constant_weights(backend):
    """z = σ(ln 3 · x), h̃ = 2x, h_0 = 1, worked out by hand: x = 1 gives z = 3/4 and
    h_1 = 1/4 · 1 + 3/4 · 2 = 1.75; x = −1 gives z = 1/4 and h_2 = 3/4 · 1.75 − 1/4 · 2."""
    layer = rnnkit.RecurrentStack(1, 2, cell="min_gru", backend=backend, dtype=torch.float64)
    fill_gates(layer.weight_ih_l0, [math.log(3), 2.0])
    fill_gates(layer.bias_ih_l0, [0.0, 0.0])
    x = torch.tensor([[[1.0]], [[-1.0]]], dtype=torch.float64)              # (T=2, B=1, 1)
    out, h_n = layer(x, torch.ones(1, 1, 2, dtype=torch.float64))
    want = torch.tensor([1.75, 0.8125], dtype=torch.float64).view(2, 1, 1).expand(2, 1, 2)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, want[-1:], rtol=1e-12, atol=1e-12)


def test_parameters_are_the_two_linear_maps_only():
    layer = rnnkit.RecurrentStack(3, 5, 2, bidirectional=True, cell="min_gru")
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {f"{base}_l{k}{rev}": shape
                      for k, width in ((0, 3), (1, 10)) for rev in ("", "_reverse")
                      for base, shape in (("weight_ih", (10, width)), ("bias_ih", (10,)))}


def test_scan_coefficients_reproduce_the_steps():
    """h_t = a_t ⊙ h_{t-1} + b_t with (a, b) from the inputs alone: the seam of a scan."""
    layer = rnnkit.RecurrentStack(3, 4, cell="min_gru", dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(outputs_from_scan_coefficients(layer, x), layer(x)[0],
                               rtol=1e-12, atol=1e-12)

"""IndRNN cell (rnnkit.cells.indrnn): hand backward vs autograd and gradcheck, the paper's
equations, golden numbers, its vector recurrent weight and initialisation."""

import pytest
import torch

import rnnkit
from conftest import (assert_all_close, assert_stack_follows_equations, fill_gates,
                      step_backward_and_autograd)
from rnnkit.cells.indrnn import IndRNNCell
from rnnkit.check import check_cell


def test_step_backward_matches_autograd():
    hand, reference, names = step_backward_and_autograd(IndRNNCell())
    assert names == ["dh_prev", "dxw", "dweight_hh"]
    assert_all_close(hand, reference, names, rtol=1e-10, atol=1e-12)


def test_gradcheck_float64_deep_bidirectional_lengths():
    row = check_cell(IndRNNCell())
    assert row.ok and row.gradcheck and row.bptt_vs_autograd < 1e-10, row


def _paper_step(x, h, p):
    """Li et al. (2018), eq. 2: h_t = σ(W x_t + u ⊙ h_{t-1} + b), σ = ReLU."""
    return torch.relu(p["weight_ih"] @ x + p["weight_hh"] * h + p["bias_ih"] + p["bias_hh"])


@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_stack_matches_the_papers_equations_under_autograd(backend):
    assert_stack_follows_equations("indrnn", _paper_step, backend)


@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_golden_constant_weights(backend):
    """H = 2 units with u = 0.9 and u = −0.5, W = 0.5, b = 0.1 − 0.2, h_0 = 0.4, worked out
    by hand: h_k = max(0, 0.5 x − 0.1 + u_k h_k). Unit 1 hits the ReLU's zero at t = 1."""
    layer = rnnkit.RecurrentStack(1, 2, cell="indrnn", backend=backend, dtype=torch.float64)
    fill_gates(layer.weight_ih_l0, [0.5])
    with torch.no_grad():
        layer.weight_hh_l0.copy_(torch.tensor([0.9, -0.5], dtype=torch.float64))
    fill_gates(layer.bias_ih_l0, [0.1])
    fill_gates(layer.bias_hh_l0, [-0.2])
    x = torch.tensor([[[1.0]], [[-1.0]], [[2.0]]], dtype=torch.float64)     # (T=3, B=1, 1)
    h0 = torch.full((1, 1, 2), 0.4, dtype=torch.float64)
    # unit 0: 0.5 − 0.1 + 0.36 = 0.76;  −0.6 + 0.684 = 0.084;  0.9 + 0.0756 = 0.9756
    # unit 1: 0.4 − 0.2 = 0.2;          −0.6 − 0.1 = −0.7 -> 0;  0.9 + 0 = 0.9
    want = torch.tensor([[0.76, 0.2], [0.084, 0.0], [0.9756, 0.9]], dtype=torch.float64)
    out, h_n = layer(x, h0)
    torch.testing.assert_close(out, want.unsqueeze(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, want[-1:].unsqueeze(1), rtol=1e-12, atol=1e-12)


def test_recurrent_weight_is_one_number_per_unit():
    layer = rnnkit.RecurrentStack(3, 5, 2, bidirectional=True, cell="indrnn")
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes["weight_hh_l0"] == shapes["weight_hh_l1_reverse"] == (5,)
    assert shapes["weight_ih_l1"] == (5, 10) and shapes["bias_hh_l0"] == (5,)


def test_units_are_independent_in_time():
    """A change of one unit's previous state reaches no other unit of the layer."""
    cell = IndRNNCell()
    xw, h_prev, u = torch.randn(2, 4), torch.rand(2, 4), torch.rand(4)
    (h,), _ = cell.step_forward(xw, (h_prev,), u, None)
    h_prev[:, 1] += 1.0
    (moved,), _ = cell.step_forward(xw, (h_prev,), u, None)
    changed = (moved != h).any(0)
    assert not changed[[0, 2, 3]].any()


def test_default_init_draws_u_from_zero_to_one():
    """The paper's setting when T is not known; the other parameters as PyTorch's."""
    layer = rnnkit.RecurrentStack(3, 64, cell="indrnn")
    assert layer.init == "uniform" and IndRNNCell.weight_hh_uniform == (0.0, 1.0)
    u = layer.weight_hh_l0.detach()
    assert 0 <= u.min() < 0.1 and 0.9 < u.max() <= 1
    assert layer.weight_ih_l0.abs().max() <= 64 ** -0.5

"""Layer-normalised LSTM (rnnkit.cells.layernorm_lstm): hand backward vs autograd and
gradcheck, a stack against the paper's equations under plain autograd, golden numbers."""

import math

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from conftest import (assert_all_close, assert_same_results, fill_gates,
                      step_backward_and_autograd)
from layernorm_reference import (layer_norm_blocks, normalized, sigmoid,
                                 stack_and_reference)
from rnnkit.cells import make_cell
from rnnkit.cells.layernorm_lstm import LayerNormLSTMCell
from rnnkit.check import check_cell

F64 = {"rtol": 1e-10, "atol": 1e-12}


def test_step_backward_matches_autograd():
    hand, reference, names = step_backward_and_autograd(LayerNormLSTMCell())
    assert_all_close(hand, reference, names, **F64)


@pytest.mark.parametrize("options", [{}, {"zoneout": 0.2, "recurrent_dropout": 0.3}], ids=["plain", "training_noise"])
def test_gradcheck_float64_deep_bidirectional_lengths(options):
    row = check_cell(make_cell("layernorm_lstm", **options))
    assert row.ok, row


def paper_step(x, state, p):
    """Ba et al.'s LN-LSTM, one step, in plain torch: each gate block normalised with its own
    gain and bias, and h = o ⊙ tanh(LN(c)). The torch biases (if any) before the norm."""
    h, c = state
    xw = x @ p["weight_ih"].t() + p.get("bias_ih", 0)
    hw = h @ p["weight_hh"].t() + p.get("bias_hh", 0)
    a = (layer_norm_blocks(xw, p["ln_scale_ih"], p["ln_shift_ih"], 4)
         + layer_norm_blocks(hw, p["ln_scale_hh"], p["ln_shift_hh"], 4))
    a_i, a_f, a_g, a_o = a.chunk(4, -1)
    c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
    c_norm = F.layer_norm(c, c.shape[-1:], p["ln_scale_c"], p["ln_shift_c"])
    return torch.sigmoid(a_o) * torch.tanh(c_norm), c


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_stack_matches_paper_equations_under_autograd(backend, bias):
    got, want = stack_and_reference(paper_step, "layernorm_lstm", backend, bias)
    assert_same_results(got, want, **F64)


def test_block_mean_of_a_bias_before_the_norm_changes_nothing():
    """What the docstring says of bias_ih/bias_hh: a constant added to one gate block of
    either (forget_bias, for one) is cancelled by that block's normalisation."""
    stack = rnnkit.RecurrentStack(3, 4, cell="layernorm_lstm", dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    before, _ = stack(x)
    with torch.no_grad():
        stack.bias_ih_l0[4:8] += 1.0                    # the forget block
        stack.bias_hh_l0[8:12] -= 2.0                   # the candidate block
    after, _ = stack(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-13)


# Golden numbers: I = 1, H = 2 and per-unit weights, so that each block's two units differ
# (with equal units a block's normalisation would be 0/0 -> 0 and test nothing).
W_IH = [0.5, -0.3, 0.2, 0.4, -0.6, 0.1, 0.3, 0.9]                 # rows of (8, 1)
W_HH = [[0.4, -0.2], [0.1, 0.3], [-0.5, 0.2], [0.6, 0.1],
        [0.3, 0.3], [-0.2, 0.7], [0.2, -0.4], [0.5, 0.5]]          # (8, 2)
B_IH = [0.1, -0.1, 0.2, 0.0, 0.3, -0.2, 0.0, 0.1]
B_HH = [0.0, 0.2, -0.1, 0.1, 0.0, 0.0, 0.2, -0.3]
SCALE_IH, SHIFT_IH = (1.0, 0.8, 1.2, 0.9), (0.1, 1.0, 0.0, -0.2)  # per gate block i, f, g, o
SCALE_HH, SHIFT_HH = (0.7, 1.1, 0.5, 1.0), (0.0, 0.5, -0.1, 0.1)
SCALE_C, SHIFT_C = (1.3, 0.6), (0.05, -0.1)                       # per unit


def _hand_ln_lstm(xs, h, c):
    """The docstring's equations on Python floats, H = 2 units; returns h_t, c_t per step."""
    hs, cs = [], []
    for x in xs:
        xw = [W_IH[r] * x + B_IH[r] for r in range(8)]
        hw = [W_HH[r][0] * h[0] + W_HH[r][1] * h[1] + B_HH[r] for r in range(8)]
        a = []
        for k in range(4):                                          # gate block k
            nx, nh = normalized(xw[2 * k:2 * k + 2]), normalized(hw[2 * k:2 * k + 2])
            a += [SCALE_IH[k] * nx[u] + SHIFT_IH[k] + SCALE_HH[k] * nh[u] + SHIFT_HH[k]
                  for u in range(2)]
        i = [sigmoid(v) for v in a[0:2]]
        f = [sigmoid(v) for v in a[2:4]]
        g = [math.tanh(v) for v in a[4:6]]
        o = [sigmoid(v) for v in a[6:8]]
        c = [f[u] * c[u] + i[u] * g[u] for u in range(2)]
        nc = normalized(c)
        h = [o[u] * math.tanh(SCALE_C[u] * nc[u] + SHIFT_C[u]) for u in range(2)]
        hs.append(h)
        cs.append(c)
    return hs, cs


@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_golden_constant_weights(backend):
    lstm = rnnkit.RecurrentStack(1, 2, cell="layernorm_lstm", backend=backend,
                                 dtype=torch.float64)
    with torch.no_grad():
        for name, values in (("weight_ih", [[w] for w in W_IH]), ("weight_hh", W_HH),
                             ("bias_ih", B_IH), ("bias_hh", B_HH), ("ln_scale_c", SCALE_C),
                             ("ln_shift_c", SHIFT_C)):
            getattr(lstm, name + "_l0").copy_(torch.tensor(values, dtype=torch.float64))
    for name, values in (("ln_scale_ih", SCALE_IH), ("ln_shift_ih", SHIFT_IH),
                         ("ln_scale_hh", SCALE_HH), ("ln_shift_hh", SHIFT_HH)):
        fill_gates(getattr(lstm, name + "_l0"), values)
    xs = [[1.0, -2.0, 0.5], [-0.5, 0.25, 2.0]]                       # per example, T = 3
    h0, c0 = [[0.4, -0.1], [0.0, 0.3]], [[-0.3, 0.2], [0.5, 0.0]]
    x = torch.tensor(xs, dtype=torch.float64).t().unsqueeze(-1)       # (T, B, 1)
    hand = [_hand_ln_lstm(seq, h, c) for seq, h, c in zip(xs, h0, c0)]
    want_out = torch.tensor([hs for hs, _ in hand], dtype=torch.float64).transpose(0, 1)
    want_c = torch.tensor([cs[-1] for _, cs in hand], dtype=torch.float64).unsqueeze(0)

    out, (h_n, c_n) = lstm(x, (torch.tensor(h0, dtype=torch.float64).unsqueeze(0),
                               torch.tensor(c0, dtype=torch.float64).unsqueeze(0)))
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)  # (T, B, H)
    torch.testing.assert_close(h_n, want_out[-1:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_n, want_c, rtol=1e-12, atol=1e-12)


def test_state_activations_report_the_carried_cell_not_its_norm():
    cell = LayerNormLSTMCell()
    H = 3
    extra = [torch.randn(s, dtype=torch.float64) for s in cell.extra_param_shapes(H).values()]
    state = tuple(torch.randn(2, H, dtype=torch.float64) for _ in range(2))
    (h, c), cache = cell.step_forward(torch.randn(2, 4 * H, dtype=torch.float64), state,
                                      torch.randn(4 * H, H, dtype=torch.float64), None, *extra)
    torch.testing.assert_close(cell.state_activations(cache)["cell"], c, rtol=0, atol=0)
    assert set(cell.gate_activations(cache)) == {"input", "forget", "output"}

"""Layer-normalised GRU (rnnkit.cells.layernorm_gru): hand backward vs autograd and
gradcheck, a stack against the equations under plain autograd, golden numbers."""

import math

import pytest
import torch

import rnnkit
from conftest import (assert_all_close, assert_same_results, fill_gates,
                      step_backward_and_autograd)
from layernorm_reference import (layer_norm_blocks, normalized, sigmoid,
                                 stack_and_reference)
from rnnkit.cells import make_cell
from rnnkit.cells.layernorm_gru import LayerNormGRUCell
from rnnkit.check import check_cell

F64 = {"rtol": 1e-10, "atol": 1e-12}


def test_step_backward_matches_autograd():
    hand, reference, names = step_backward_and_autograd(LayerNormGRUCell())
    assert_all_close(hand, reference, names, **F64)


@pytest.mark.parametrize("options", [{}, {"zoneout": 0.3}], ids=["plain", "training_noise"])
def test_gradcheck_float64_deep_bidirectional_lengths(options):
    row = check_cell(make_cell("layernorm_gru", **options))
    assert row.ok, row


def paper_step(x, state, p):
    """The LN-GRU in plain torch: torch.nn.GRU's cell with its products x W_ih.T + b_ih and
    h W_hh.T + b_hh layer-normalised per gate block, each with its own gain and bias."""
    (h,) = state
    ax = layer_norm_blocks(x @ p["weight_ih"].t() + p.get("bias_ih", 0), p["ln_scale_ih"],
                           p["ln_shift_ih"], 3)
    ah = layer_norm_blocks(h @ p["weight_hh"].t() + p.get("bias_hh", 0), p["ln_scale_hh"],
                           p["ln_shift_hh"], 3)
    (ax_r, ax_z, ax_n), (ah_r, ah_z, ah_n) = ax.chunk(3, -1), ah.chunk(3, -1)
    r, z = torch.sigmoid(ax_r + ah_r), torch.sigmoid(ax_z + ah_z)
    n = torch.tanh(ax_n + r * ah_n)
    return ((1 - z) * n + z * h,)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_stack_matches_equations_under_autograd(backend, bias):
    got, want = stack_and_reference(paper_step, "layernorm_gru", backend, bias)
    assert_same_results(got, want, **F64)


# Golden numbers: I = 1, H = 2 and per-unit weights, so that each block's two units differ
# (with equal units a block's normalisation would be 0/0 -> 0 and test nothing).
W_IH = [0.5, -0.3, 0.2, 0.4, -0.6, 0.1]                            # rows of (6, 1)
W_HH = [[0.4, -0.2], [0.1, 0.3], [-0.5, 0.2], [0.6, 0.1], [0.3, -0.3], [-0.2, 0.7]]
B_IH = [0.1, -0.1, 0.2, 0.0, 0.3, -0.2]
B_HH = [0.0, 0.2, -0.1, 0.1, 0.0, 0.4]
SCALE_IH, SHIFT_IH = (1.0, 0.8, 1.2), (0.1, -0.5, 0.0)            # per gate block r, z, n
SCALE_HH, SHIFT_HH = (0.7, 1.1, 0.5), (0.0, 0.3, -0.2)


def _hand_ln_gru(xs, h):
    """The docstring's equations on Python floats, H = 2 units; returns h_t per step."""
    hs = []
    for x in xs:
        xw = [W_IH[r] * x + B_IH[r] for r in range(6)]
        hw = [W_HH[r][0] * h[0] + W_HH[r][1] * h[1] + B_HH[r] for r in range(6)]
        ax, ah = [], []
        for k in range(3):                                          # gate block k
            ax += [SCALE_IH[k] * v + SHIFT_IH[k] for v in normalized(xw[2 * k:2 * k + 2])]
            ah += [SCALE_HH[k] * v + SHIFT_HH[k] for v in normalized(hw[2 * k:2 * k + 2])]
        r = [sigmoid(ax[u] + ah[u]) for u in range(2)]
        z = [sigmoid(ax[2 + u] + ah[2 + u]) for u in range(2)]
        n = [math.tanh(ax[4 + u] + r[u] * ah[4 + u]) for u in range(2)]
        h = [(1 - z[u]) * n[u] + z[u] * h[u] for u in range(2)]
        hs.append(h)
    return hs


@pytest.mark.parametrize("backend", ["bptt", "autograd"])
def test_golden_constant_weights(backend):
    gru = rnnkit.RecurrentStack(1, 2, cell="layernorm_gru", backend=backend, dtype=torch.float64)
    with torch.no_grad():
        for name, values in (("weight_ih", [[w] for w in W_IH]), ("weight_hh", W_HH),
                             ("bias_ih", B_IH), ("bias_hh", B_HH)):
            getattr(gru, name + "_l0").copy_(torch.tensor(values, dtype=torch.float64))
    for name, values in (("ln_scale_ih", SCALE_IH), ("ln_shift_ih", SHIFT_IH),
                         ("ln_scale_hh", SCALE_HH), ("ln_shift_hh", SHIFT_HH)):
        fill_gates(getattr(gru, name + "_l0"), values)
    xs = [[1.0, -2.0, 0.5], [-0.5, 0.25, 2.0]]                       # per example, T = 3
    h0 = [[0.4, -0.1], [0.0, 0.3]]
    x = torch.tensor(xs, dtype=torch.float64).t().unsqueeze(-1)       # (T, B, 1)
    want = torch.tensor([_hand_ln_gru(seq, h) for seq, h in zip(xs, h0)],
                        dtype=torch.float64).transpose(0, 1)          # (T, B, H)

    out, h_n = gru(x, torch.tensor(h0, dtype=torch.float64).unsqueeze(0))
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, want[-1:], rtol=1e-12, atol=1e-12)

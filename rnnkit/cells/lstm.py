"""LSTM cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

Gate order i, f, g, o, as ``torch.nn.LSTM``; parameters ``weight_ih`` (4H, I),
``weight_hh`` (4H, H), ``bias_ih`` and ``bias_hh`` (4H,). Equations in the code's symbols::

    a = x_t @ weight_ih.T + bias_ih + h_{t-1} @ weight_hh.T + bias_hh      (n, 4H)
    i = σ(a_i [+ p_i ⊙ c_{t-1}])       input gate
    f = σ(a_f [+ p_f ⊙ c_{t-1}])       forget gate
    g = tanh(a_g)                      candidate
    c_t = f ⊙ c_{t-1} + i ⊙ g
    o = σ(a_o [+ p_o ⊙ c_t])           output gate
    h_t = o ⊙ tanh(c_t)

The bracketed terms are the optional peepholes of Gers & Schmidhuber (2000): a diagonal
connection from the cell to its gates, one parameter ``weight_peephole`` (3H,) = [p_i, p_f,
p_o]. Without peepholes the cell is exactly ``torch.nn.LSTM``'s. Textbook names: U_k the
rows of ``weight_ih`` for gate k, W_k those of ``weight_hh``, b_k = bias_ih_k + bias_hh_k.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, per_step, stacked


class LSTMCache(NamedTuple):
    """What one forward step keeps: the previous state, the gates, the new cell."""

    h_prev: Tensor      # (n, H)
    c_prev: Tensor      # (n, H)
    gates: Tensor       # (n, 4H) σ(a_i), σ(a_f), tanh(a_g) (unused slot), σ(a_o)
    g: Tensor           # (n, H) candidate
    tanh_c: Tensor      # (n, H) tanh(c_t)
    c: Tensor           # (n, H) c_t


class LSTMFactors(NamedTuple):
    """The backward's per-step factors, from :meth:`LSTMCell.prepare_backward`."""

    dc_dh: Tensor       # (n, H) dc gains dh ⊙ dc_dh: o ⊙ (1 − tanh²c) [+ peephole path]
    F: Tensor           # (n, 4H) dL/da = [dc, dc, dc, dh] ⊙ F
    dc_prev_dc: Tensor  # (n, H) dc_{t-1} = dc ⊙ dc_prev_dc: f [+ peephole paths]


def gate_factors(gates: Tensor, g: Tensor, c_prev: Tensor, tanh_out: Tensor) -> Tensor:
    """F of ``dL/da = [dc, dc, dc, dh] ⊙ F`` for the gate pre-activations a (i, f, g, o),
    from the gates (N, 4H) [σ(a_i), σ(a_f), ·, σ(a_o)], the candidate g, c_{t-1} and the
    tanh that the output gate multiplies (tanh c_t; a layer-normalised cell's tanh u)::

        da_i = dc g σ'(i),  da_f = dc c_{t-1} σ'(f),  da_g = dc i (1 − g²),  da_o = dh tanh σ'(o)
    """
    H = g.shape[1]
    F = gates - gates * gates                               # σ' = σ(1 − σ)    (N, 4H)
    F[:, 2 * H:3 * H] = gates[:, :H] * (1 - g * g)
    F[:, :H] *= g
    F[:, H:2 * H] *= c_prev
    F[:, 3 * H:] *= tanh_out
    return F


class LSTMCell(Cell):
    """LSTM step on states ``(h, c)``; ``peephole=True`` adds the diagonal peepholes."""

    gates = 4
    gate_names = ("input", "forget", "candidate", "output")   # the blocks of weight_hh, in order
    num_states = 2
    state_names = ("h", "c")
    fold_bias_hh = True
    h_prev_in_product_only = True

    def __init__(self, peephole: bool = False):
        self.peephole = bool(peephole)
        self.native_mode = None if self.peephole else "LSTM"
        self.name = "lstm_peephole" if self.peephole else "lstm"

    def extra_param_shapes(self, hidden_size):
        return {"weight_peephole": (3 * hidden_size,)} if self.peephole else {}

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        h_prev, c_prev = state                              # (n, H) each
        H = c_prev.shape[1]
        a = torch.addmm(xw, h_prev, weight_hh.t())          # (n, 4H)
        if bias_hh is not None:
            a = a + bias_hh
        if self.peephole:
            p_i, p_f, p_o = extra[0].chunk(3)
            a_i, a_f, a_g, a_o = a.chunk(4, 1)
            i = (a_i + p_i * c_prev).sigmoid()
            f = (a_f + p_f * c_prev).sigmoid()
            g = a_g.tanh()
        else:
            sig = a.sigmoid()                               # i, f, o in one call (g unused)
            i, f, _, o = sig.chunk(4, 1)
            g = a[:, 2 * H:3 * H].tanh()
        c = torch.addcmul(f * c_prev, i, g)                 # c_t = f ⊙ c_{t-1} + i ⊙ g
        if self.peephole:
            o = (a_o + p_o * c).sigmoid()
            sig = torch.cat([i, f, g, o], 1)                # the layout of the plain cell
        tc = c.tanh()
        h = o * tc                                          # h_t = o ⊙ tanh(c_t)
        return (h, c), LSTMCache(h_prev, c_prev, sig, g, tc, c)

    def prepare_backward(self, caches, *extra):
        """Per-step factors of the backward, for all steps at once (see step_backward)."""
        c_prev, sig, g, tc = (stacked(caches, k) for k in ("c_prev", "gates", "g", "tanh_c"))
        H = g.shape[1]
        f, o = sig[:, H:2 * H], sig[:, 3 * H:]
        F = gate_factors(sig, g, c_prev, tc)                # da = [dc, dc, dc, dh] ⊙ F
        dc_dh = o * (1 - tc * tc)                           # dc gains dh ⊙ o ⊙ (1 − tanh²c)
        dc_prev_dc = f                                      # dc_{t-1} = dc ⊙ f
        if self.peephole:
            p_i, p_f, p_o = extra[0].chunk(3)
            dc_dh = dc_dh + F[:, 3 * H:] * p_o              # o sees c_t through p_o
            dc_prev_dc = f + F[:, :H] * p_i + F[:, H:2 * H] * p_f  # i, f see c_{t-1}
        return per_step(caches, LSTMFactors, dc_dh, F, dc_prev_dc)

    def step_backward(self, dstate, cache, weight_hh, *extra):
        dh, dc_next = dstate                                # (n, H) each
        dc = torch.addcmul(dc_next, dh, cache.dc_dh)        # dc = dc_next + dh ⊙ o ⊙ (1 − tanh²c)
        da = torch.cat([dc, dc, dc, dh], 1).mul_(cache.F)   # dL/da for i, f, g, o   (n, 4H)
        dh_prev = da @ weight_hh                            # dL/dh_{t-1} = da W
        dc_prev = dc * cache.dc_prev_dc                     # dL/dc_{t-1} = dc ⊙ f
        return (dh_prev, dc_prev), da, da

    def param_backward(self, dhw, caches, *extra):
        (dweight_hh,) = super().param_backward(dhw, caches)
        if not self.peephole:
            return (dweight_hh,)
        H = dhw.shape[1] // 4
        c_prev, c = stacked(caches, "c_prev"), stacked(caches, "c")  # (N, H) each
        dp = torch.cat([(dhw[:, :H] * c_prev).sum(0),       # dL/dp_i = Σ da_i ⊙ c_{t-1}
                        (dhw[:, H:2 * H] * c_prev).sum(0),  # dL/dp_f = Σ da_f ⊙ c_{t-1}
                        (dhw[:, 3 * H:] * c).sum(0)])       # dL/dp_o = Σ da_o ⊙ c_t
        return dweight_hh, dp

    # -- diagnostics hooks -------------------------------------------------------------------

    def gate_activations(self, cache):
        i, f, _, o = cache.gates.chunk(4, 1)
        return {"input": i, "forget": f, "output": o}

    def state_activations(self, cache):
        return {"cell": cache.c}

    def full_state_grad(self, dstate, factors):
        dh, dc_next = dstate
        return dh, torch.addcmul(dc_next, dh, factors.dc_dh)   # the dc of step_backward

    def __repr__(self):
        return f"LSTMCell(peephole={self.peephole})"

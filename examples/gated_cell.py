"""A cell of your own, in the same form as rnnkit's built-in cells: a minimal gated RNN.

One update gate z and one candidate n (a GRU without its reset gate)::

    a = x_t @ weight_ih.T + bias_ih + h_{t-1} @ weight_hh.T + bias_hh     (n, 2H), gates z, n
    z = σ(a_z)                       update gate
    n = tanh(a_n)                    candidate
    h_t = (1 − z) ⊙ h_{t-1} + z ⊙ n

Use it with any backend but "native"::

    layer = rnnkit.RecurrentStack(10, 32, num_layers=2, cell=GatedCell())
    rnnkit.check.check_cell(GatedCell()).ok       # True: the hand backward is right
"""

from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.cells import Cell
from rnnkit.cells.base import per_step, stacked


class GatedCache(NamedTuple):
    """What the forward keeps for the backward (``h_prev`` first: the default
    ``param_backward`` reads it)."""

    h_prev: Tensor      # (n, H)
    z: Tensor           # (n, H) update gate
    n: Tensor           # (n, H) candidate


class GatedFactors(NamedTuple):
    """The backward's per-step factors."""

    da_dh: Tensor       # (n, 2H) dL/da = [dh, dh] ⊙ da_dh
    keep: Tensor        # (n, H) the direct path dh_{t-1} += (1 − z) ⊙ dh


class GatedCell(Cell):
    name = "gated"
    gates = 2               # weight_ih (2H, I), weight_hh (2H, H)
    num_states = 1          # state (h,)
    fold_bias_hh = True     # bias_hh can be added to the input projection

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        (h_prev,) = state                                   # (n, H)
        H = h_prev.shape[1]
        a = torch.addmm(xw, h_prev, weight_hh.t())          # (n, 2H)
        z = a[:, :H].sigmoid()
        n = a[:, H:].tanh()
        h = h_prev + z * (n - h_prev)                       # (1 − z) h_{t-1} + z n
        return (h,), GatedCache(h_prev, z, n)

    def prepare_backward(self, caches, *extra):
        """Factors that depend only on the forward, for all steps at once."""
        h_prev, z, n = (stacked(caches, k) for k in GatedCache._fields)  # (N, H) each
        dz = (n - h_prev) * z * (1 - z)                     # da_z = dh (n − h_{t-1}) σ'
        dn = z * (1 - n * n)                                # da_n = dh z tanh'
        return per_step(caches, GatedFactors, torch.cat([dz, dn], 1), 1 - z)

    def step_backward(self, dstate, cache, weight_hh, *extra):
        (dh,) = dstate                                      # (n, H)
        da = torch.cat([dh, dh], 1) * cache.da_dh           # dL/da  (n, 2H)
        dh_prev = torch.addmm(dh * cache.keep, da, weight_hh)  # (1 − z) dh + da W
        return (dh_prev,), da, da                           # d(prev state), dxw, dhw

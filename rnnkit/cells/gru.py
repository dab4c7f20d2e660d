"""GRU cell in both published forms (Cho et al. 2014; Chung et al. 2014).

Gate order r, z, n, as ``torch.nn.GRU``; parameters ``weight_ih`` (3H, I), ``weight_hh``
(3H, H), ``bias_ih`` and ``bias_hh`` (3H,). With ``xw = x_t @ weight_ih.T + bias_ih``::

    r = σ(xw_r + h_{t-1} @ W_r.T + b_hr)                 reset gate
    z = σ(xw_z + h_{t-1} @ W_z.T + b_hz)                 update gate
    reset after  (cuDNN / PyTorch):  n = tanh(xw_n + r ⊙ (h_{t-1} @ W_n.T + b_hn))
    reset before (Cho et al.):       n = tanh(xw_n + (r ⊙ h_{t-1}) @ W_n.T + b_hn)
    h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}

Update convention: the papers write ``h_t = (1 − u) h_{t−1} + u h̃_t`` with update gate u
and candidate h̃; here, as in PyTorch's state_dict, z = 1 − u and n = h̃. The two are the
same model with the z rows of the weights negated — rnnkit follows PyTorch so that
``state_dict`` moves between ``rnnkit.GRU`` and ``torch.nn.GRU`` unchanged.
Textbook names: U_k = rows of ``weight_ih`` for gate k, W_k = rows of ``weight_hh``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, per_step, stacked


class GRUCache(NamedTuple):
    """What one forward step keeps (both forms)."""

    h_prev: Tensor      # (n, H)
    rz: Tensor          # (n, 2H) the reset and update gates, [r | z]
    n: Tensor           # (n, H) candidate
    product: Tensor     # (n, H) reset after: h_{t-1} W_n.T + b_hn; reset before: r ⊙ h_{t-1}


class GRUFactors(NamedTuple):
    """The reset-after backward's per-step factors (see ``GRUCell.prepare_backward``)."""

    F_x: Tensor         # (n, 3H) dxw = [dh, dh, dh] ⊙ F_x
    F_h: Tensor         # (n, 3H) dhw = [dh, dh, dh] ⊙ F_h
    z: Tensor           # (n, H) the direct path dh_{t-1} += z ⊙ dh


class GRUResetBeforeFactors(NamedTuple):
    """The reset-before backward's per-step factors."""

    F_n: Tensor         # (n, H) da_n = dh ⊙ F_n
    F_r: Tensor         # (n, H) da_r = d(r ⊙ h_{t-1}) ⊙ F_r
    F_z: Tensor         # (n, H) da_z = dh ⊙ F_z
    r: Tensor           # (n, H)
    z: Tensor           # (n, H)


def _gates(cache: GRUCache) -> dict:
    """The reset and update gates of one step, (n, H) each."""
    reset, update = cache.rz.chunk(2, 1)
    return {"reset": reset, "update": update}


class GRUCell(Cell):
    """GRU step with the reset gate applied after the recurrent product (PyTorch form)."""

    name = "gru"
    gates = 3
    gate_names = ("reset", "update", "candidate")   # the blocks of weight_hh, in order
    num_states = 1
    fold_bias_hh = False    # b_hn sits inside r ⊙ (…), so it cannot join the input projection
    native_mode = "GRU"

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        (h_prev,) = state                                   # (n, H)
        H = h_prev.shape[1]
        if bias_hh is None:
            hw = h_prev @ weight_hh.t()                     # (n, 3H)
        else:
            hw = torch.addmm(bias_hh, h_prev, weight_hh.t())
        rz = (xw[:, :2 * H] + hw[:, :2 * H]).sigmoid()      # (n, 2H)
        r, z = rz.chunk(2, 1)
        hn = hw[:, 2 * H:]                                  # h_{t-1} @ W_n.T + b_hn
        n = (xw[:, 2 * H:] + r * hn).tanh()
        h = n + z * (h_prev - n)                            # (1 − z) n + z h_{t-1}
        return (h,), GRUCache(h_prev, rz, n, hn)

    def prepare_backward(self, caches, *extra):
        """Per-step factors of the backward, for all steps at once (see step_backward)."""
        h_prev, rz, n, hn = (stacked(caches, k) for k in GRUCache._fields)  # (N, ·)
        r, z = rz.chunk(2, 1)
        F_n = (1 - z) * (1 - n * n)                         # da_n = dh (1 − z) tanh'
        F_r = F_n * hn * r * (1 - r)                        # da_r = da_n (h W_n.T + b_hn) σ'
        F_z = (h_prev - n) * z * (1 - z)                    # da_z = dh (h_{t-1} − n) σ'
        F_x = torch.cat([F_r, F_z, F_n], 1)                 # dxw = [dh, dh, dh] ⊙ F_x
        F_h = torch.cat([F_r, F_z, F_n * r], 1)             # dhw: the n block passes r
        return per_step(caches, GRUFactors, F_x, F_h, z)

    def step_backward(self, dstate, cache, weight_hh, *extra):
        (dh,) = dstate                                      # (n, H)
        dh3 = torch.cat([dh, dh, dh], 1)                    # (n, 3H)
        dxw = dh3 * cache.F_x                               # dL/d(input projection)
        dhw = dh3.mul_(cache.F_h)                           # dL/d(h W.T + b_hh)
        dh_prev = torch.addmm(dh * cache.z, dhw, weight_hh)  # direct path z ⊙ dh, plus dhw W
        return (dh_prev,), dxw, dhw

    def gate_activations(self, cache):
        return _gates(cache)

    def __repr__(self):
        return "GRUCell(reset_after=True)"


class GRUResetBeforeCell(Cell):
    """GRU step with the reset gate applied to h before the recurrent product (Cho et al.)."""

    name = "gru_reset_before"
    gates = 3
    gate_names = ("reset", "update", "candidate")   # the blocks of weight_hh, in order
    num_states = 1
    fold_bias_hh = True
    native_mode = None

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        (h_prev,) = state                                   # (n, H)
        H = h_prev.shape[1]
        a_rz = torch.addmm(xw[:, :2 * H], h_prev, weight_hh[:2 * H].t())  # (n, 2H)
        if bias_hh is not None:
            a_rz = a_rz + bias_hh[:2 * H]
        rz = a_rz.sigmoid()
        r, z = rz.chunk(2, 1)
        rh = r * h_prev                                     # reset before the product
        a_n = torch.addmm(xw[:, 2 * H:], rh, weight_hh[2 * H:].t())
        if bias_hh is not None:
            a_n = a_n + bias_hh[2 * H:]
        n = a_n.tanh()
        h = n + z * (h_prev - n)
        return (h,), GRUCache(h_prev, rz, n, rh)

    def prepare_backward(self, caches, *extra):
        """Per-step factors of the backward, for all steps at once (see step_backward)."""
        h_prev, rz, n = (stacked(caches, k) for k in ("h_prev", "rz", "n"))  # (N, ·)
        r, z = rz.chunk(2, 1)
        F_n = (1 - z) * (1 - n * n)                         # da_n = dh (1 − z) tanh'
        F_r = h_prev * r * (1 - r)                          # da_r = d(r ⊙ h) h_{t-1} σ'
        F_z = (h_prev - n) * z * (1 - z)                    # da_z = dh (h_{t-1} − n) σ'
        return per_step(caches, GRUResetBeforeFactors, F_n, F_r, F_z, r, z)

    def step_backward(self, dstate, cache, weight_hh, *extra):
        (dh,) = dstate                                      # (n, H)
        H = dh.shape[1]
        da_n = dh * cache.F_n
        drh = da_n @ weight_hh[2 * H:]                      # dL/d(r ⊙ h_{t-1}) = da_n W_n
        da_rz = torch.cat([drh * cache.F_r, dh * cache.F_z], 1)  # (n, 2H)
        dh_prev = torch.addmm(torch.addcmul(dh * cache.z, drh, cache.r), da_rz,
                              weight_hh[:2 * H])
        da = torch.cat([da_rz, da_n], 1)                    # (n, 3H)
        return (dh_prev,), da, da

    def param_backward(self, dhw, caches, *extra):
        H = dhw.shape[1] // 3
        h_prev, rh = stacked(caches, "h_prev"), stacked(caches, "product")  # (N, H) each
        return (torch.cat([dhw[:, :2 * H].t() @ h_prev,     # r, z rows see h_{t-1}
                           dhw[:, 2 * H:].t() @ rh]),)      # n rows see r ⊙ h_{t-1}

    def gate_activations(self, cache):
        return _gates(cache)

    def __repr__(self):
        return "GRUResetBeforeCell()"

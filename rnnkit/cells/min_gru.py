"""Minimal GRU (minGRU): a GRU whose gate and candidate read the input alone.

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi (2024), "Were RNNs All We Needed?", step
(sequential) form. Gate order z, h̃; parameters ``weight_ih`` (2H, I) and ``bias_ih`` (2H,)
— the rows of Linear_z, then Linear_h — and no ``weight_hh`` nor ``bias_hh`` (the cell's
``weight_hh_shape`` is None). Equations in the code's symbols::

    xw = x_t @ weight_ih.T + bias_ih                    (n, 2H), blocks z, h̃
    z = σ(xw_z)                                         update gate      [z_t = σ(Linear_z(x_t))]
    h̃ = xw_h                                            candidate        [h̃_t = Linear_h(x_t)]
    h_t = (1 − z) ⊙ h_{t-1} + z ⊙ h̃

Update convention: the paper's, ``z`` weighs the candidate (PyTorch's GRU has the two
swapped, see :mod:`rnnkit.cells.gru`); unlike a GRU there is no reset gate, no tanh on the
candidate, and nothing of h_{t-1} inside the gates.

Parallel scan: the state is linear in h_{t-1}, ``h_t = a_t ⊙ h_{t-1} + b_t`` with
``a_t = 1 − z_t`` and ``b_t = z_t ⊙ h̃_t`` known from the inputs alone
(:meth:`MinGRUCell.scan_coefficients`, all steps at once). That is where a parallel-scan
training path plugs in: ``rnnkit.bptt`` runs the step loop below; a scan engine would
compute every h_t from (a_t, b_t) by a prefix scan, and the backward by the reverse scan
``dh_{t-1} = a_t ⊙ dh_t`` (+ the output's gradient), then ``dxw`` from
:meth:`MinGRUCell.scan_coefficients_backward`: that engine is :mod:`rnnkit.scan`
(``backend="scan"``).

Backward, the forward read in reverse::

    dh_{t-1} = dh ⊙ (1 − z)
    dxw_z = dh ⊙ (h̃ − h_{t-1}) ⊙ z (1 − z),     dxw_h = dh ⊙ z
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, per_step, stacked


class MinGRUCache(NamedTuple):
    h_prev: Tensor      # (n, H)
    z: Tensor           # (n, H) update gate
    h_tilde: Tensor     # (n, H) candidate


class MinGRUFactors(NamedTuple):
    F: Tensor           # (n, 2H) dxw = [dh, dh] ⊙ F
    keep: Tensor        # (n, H) dh_{t-1} = dh ⊙ (1 − z)


class MinGRUCell(Cell):
    """minGRU step ``h = (1 − z) ⊙ h_prev + z ⊙ h̃`` with z and h̃ from x_t alone."""

    name = "min_gru"
    gates = 2
    gate_names = ("update", "candidate")       # the blocks of weight_ih, in order
    num_states = 1

    def weight_hh_shape(self, hidden_size):
        return None                                         # no recurrent weight

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        (h_prev,) = state                                   # (n, H)
        a_z, h_tilde = xw.chunk(2, 1)                       # (n, H) each
        z = a_z.sigmoid()
        h = h_prev + z * (h_tilde - h_prev)                 # (1 − z) ⊙ h_{t-1} + z ⊙ h̃
        return (h,), MinGRUCache(h_prev, z, h_tilde)

    def prepare_backward(self, caches, *extra):
        """Per-step factors of the backward, for all steps at once (see step_backward)."""
        h_prev, z, h_tilde = (stacked(caches, k) for k in MinGRUCache._fields)  # (N, H)
        F_z = (h_tilde - h_prev) * z * (1 - z)              # dxw_z = dh (h̃ − h_{t-1}) σ'
        F = torch.cat([F_z, z], 1)                          # dxw_h = dh z
        return per_step(caches, MinGRUFactors, F, 1 - z)

    def step_backward(self, dstate, cache, weight_hh, *extra):
        (dh,) = dstate                                      # (n, H)
        dxw = torch.cat([dh, dh], 1).mul_(cache.F)          # dL/dxw   (n, 2H)
        dh_prev = dh * cache.keep                           # dL/dh_{t-1} = dh ⊙ (1 − z)
        return (dh_prev,), dxw, dxw

    def param_backward(self, dhw, caches, *extra):
        return (None,)                                      # no weight_hh, no extras

    # -- the parallel-scan seam --------------------------------------------------------------

    def scan_coefficients(self, xw: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of ``h_t = a_t ⊙ h_{t-1} + b_t`` for every row of ``xw`` (N, 2H):
        ``a = 1 − z``, ``b = z ⊙ h̃``, (N, H) each."""
        a_z, h_tilde = xw.chunk(2, 1)
        z = a_z.sigmoid()
        return 1 - z, z * h_tilde

    def scan_coefficients_backward(self, xw: Tensor, da: Tensor, db: Tensor) -> Tensor:
        """dL/dxw (N, 2H) from dL/da and dL/db (N, H) each (the scan's backward)."""
        a_z, h_tilde = xw.chunk(2, 1)
        z = a_z.sigmoid()
        dz = db * h_tilde - da                              # a = 1 − z, b = z h̃
        return torch.cat([dz * z * (1 - z), db * z], 1)     # dxw_z = dz σ', dxw_h = db z

    # -- diagnostics hooks -------------------------------------------------------------------

    def gate_activations(self, cache):
        return {"update": cache.z}

    def __repr__(self):
        return "MinGRUCell()"

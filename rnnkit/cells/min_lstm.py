"""Minimal LSTM (minLSTM): forget and input gates from the input alone, normalised to sum 1.

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi (2024), "Were RNNs All We Needed?", step
(sequential) form. Gate order f, i, h̃ (the paper's); parameters ``weight_ih`` (3H, I) and
``bias_ih`` (3H,) — the rows of Linear_f, Linear_i, Linear_h — and no ``weight_hh`` nor
``bias_hh`` (the cell's ``weight_hh_shape`` is None). Equations in the code's symbols::

    xw = x_t @ weight_ih.T + bias_ih                    (n, 3H), blocks f, i, h̃
    f = σ(xw_f)                                         forget gate   [f_t = σ(Linear_f(x_t))]
    i = σ(xw_i)                                         input gate    [i_t = σ(Linear_i(x_t))]
    h̃ = xw_h                                            candidate     [h̃_t = Linear_h(x_t)]
    f' = f / (f + i),   i' = i / (f + i)                normalised: f' + i' = 1
    h_t = f' ⊙ h_{t-1} + i' ⊙ h̃

No cell state and no output gate: the state is h alone. The normalisation is computed as
the paper's own code does, through ``d = log i − log f = softplus(−xw_f) − softplus(−xw_i)``:
``i' = σ(d)``, ``f' = σ(−d)`` — the same numbers, finite even where f and i both underflow.

Parallel scan: the state is linear in h_{t-1}, ``h_t = a_t ⊙ h_{t-1} + b_t`` with
``a_t = f'_t`` and ``b_t = i'_t ⊙ h̃_t`` known from the inputs alone
(:meth:`MinLSTMCell.scan_coefficients`, all steps at once). That is where a parallel-scan
training path plugs in: ``rnnkit.bptt`` runs the step loop below; a scan engine would
compute every h_t from (a_t, b_t) by a prefix scan, and the backward by the reverse scan
``dh_{t-1} = a_t ⊙ dh_t`` (+ the output's gradient), then ``dxw`` from
:meth:`MinLSTMCell.scan_coefficients_backward`: that engine is :mod:`rnnkit.scan`
(``backend="scan"``).

Backward, the forward read in reverse (``∂i'/∂d = i' f'``, ``∂d/∂xw_f = −(1 − f)``,
``∂d/∂xw_i = 1 − i``)::

    dh_{t-1} = dh ⊙ f',     dxw_h = dh ⊙ i'
    dd = dh ⊙ (h̃ − h_{t-1}) ⊙ f' i'
    dxw_f = −dd ⊙ (1 − f),  dxw_i = dd ⊙ (1 − i)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.functional import softplus

from rnnkit.cells.base import Cell, per_step, stacked


class MinLSTMCache(NamedTuple):
    h_prev: Tensor      # (n, H)
    gates: Tensor       # (n, 2H) [f | i], the sigmoid gates
    normalised: Tensor  # (n, 2H) [f' | i'], f' + i' = 1
    h_tilde: Tensor     # (n, H) candidate


class MinLSTMFactors(NamedTuple):
    F: Tensor           # (n, 3H) dxw = [dh, dh, dh] ⊙ F
    keep: Tensor        # (n, H) dh_{t-1} = dh ⊙ f'


def _normalised_gates(a_f: Tensor, a_i: Tensor) -> Tensor:
    """[f' | i'] = [f / (f + i) | i / (f + i)] for f = σ(a_f), i = σ(a_i), in log space."""
    d = softplus(-a_f) - softplus(-a_i)                     # log i − log f
    return torch.cat([(-d).sigmoid(), d.sigmoid()], 1)     # (n, 2H)


class MinLSTMCell(Cell):
    """minLSTM step ``h = f' ⊙ h_prev + i' ⊙ h̃`` with f, i and h̃ from x_t alone."""

    name = "min_lstm"
    gates = 3
    gate_names = ("forget", "input", "candidate")   # the blocks of weight_ih, in order
    num_states = 1

    def weight_hh_shape(self, hidden_size):
        return None                                         # no recurrent weight

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        (h_prev,) = state                                   # (n, H)
        H = h_prev.shape[1]
        gates = xw[:, :2 * H].sigmoid()                     # [f | i]   (n, 2H)
        normalised = _normalised_gates(xw[:, :H], xw[:, H:2 * H])
        f_n, i_n = normalised.chunk(2, 1)                   # f', i'
        h_tilde = xw[:, 2 * H:]
        h = torch.addcmul(f_n * h_prev, i_n, h_tilde)       # f' ⊙ h_{t-1} + i' ⊙ h̃
        return (h,), MinLSTMCache(h_prev, gates, normalised, h_tilde)

    def prepare_backward(self, caches, *extra):
        """Per-step factors of the backward, for all steps at once (see step_backward)."""
        h_prev, gates, normalised, h_tilde = (stacked(caches, k) for k in MinLSTMCache._fields)
        f, i = gates.chunk(2, 1)                            # (N, H) each
        f_n, i_n = normalised.chunk(2, 1)
        dd = (h_tilde - h_prev) * f_n * i_n                 # dd = dh (h̃ − h_{t-1}) f' i'
        F = torch.cat([-dd * (1 - f),                       # dxw_f = −dd (1 − f)
                       dd * (1 - i),                        # dxw_i = dd (1 − i)
                       i_n], 1)                             # dxw_h = dh i'
        return per_step(caches, MinLSTMFactors, F, f_n)

    def step_backward(self, dstate, cache, weight_hh, *extra):
        (dh,) = dstate                                      # (n, H)
        dxw = torch.cat([dh, dh, dh], 1).mul_(cache.F)      # dL/dxw   (n, 3H)
        dh_prev = dh * cache.keep                           # dL/dh_{t-1} = dh ⊙ f'
        return (dh_prev,), dxw, dxw

    def param_backward(self, dhw, caches, *extra):
        return (None,)                                      # no weight_hh, no extras

    # -- the parallel-scan seam --------------------------------------------------------------

    def scan_coefficients(self, xw: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of ``h_t = a_t ⊙ h_{t-1} + b_t`` for every row of ``xw`` (N, 3H):
        ``a = f'``, ``b = i' ⊙ h̃``, (N, H) each."""
        H = xw.shape[1] // 3
        f_n, i_n = _normalised_gates(xw[:, :H], xw[:, H:2 * H]).chunk(2, 1)
        return f_n, i_n * xw[:, 2 * H:]

    def scan_coefficients_backward(self, xw: Tensor, da: Tensor, db: Tensor) -> Tensor:
        """dL/dxw (N, 3H) from dL/da and dL/db (N, H) each (the scan's backward):
        ``a = f' = σ(−d)``, ``b = i' h̃`` with ``i' = σ(d)``, so ``dd = (db h̃ − da) i' f'``."""
        H = xw.shape[1] // 3
        a_f, a_i, h_tilde = xw[:, :H], xw[:, H:2 * H], xw[:, 2 * H:]
        f_n, i_n = _normalised_gates(a_f, a_i).chunk(2, 1)
        dd = (db * h_tilde - da) * i_n * f_n
        return torch.cat([-dd * (1 - a_f.sigmoid()), dd * (1 - a_i.sigmoid()), db * i_n], 1)

    # -- diagnostics hooks -------------------------------------------------------------------

    def gate_activations(self, cache):
        f, i = cache.gates.chunk(2, 1)
        return {"forget": f, "input": i}

    def __repr__(self):
        return "MinLSTMCell()"

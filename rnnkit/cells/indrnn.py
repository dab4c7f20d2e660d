"""IndRNN cell: each unit has a single recurrent weight on its own previous value.

Li, Li, Cook, Zhu & Gao (2018), "Independently Recurrent Neural Network (IndRNN): Building
a Longer and Deeper RNN". Equations in the code's symbols (textbook names in brackets)::

    a_t = x_t @ weight_ih.T + bias_ih + weight_hh ⊙ h_{t-1} + bias_hh        (n, H)
    h_t = relu(a_t)

    [paper]  h_t = σ(W x_t + u ⊙ h_{t-1} + b),  W = weight_ih (H, I),  u = weight_hh (H,),
             b = bias_ih + bias_hh (H,) each,  σ = ReLU.

``weight_hh`` is a vector, not a matrix (the cell declares it in ``weight_hh_shape``): the
units of a layer are independent in time and meet only through the next layer, so a stack
of two or more layers is the usual network. Unit k's gradient through the steps t..T is
``Π u_k relu'(a)``: it can explode only where ``|u_k| > 1``, which the paper bounds by
``|u_k| ≤ 2^(1/T)`` (a growth of at most 2 over T steps), and it keeps its size over long
spans where u_k is near 1 and the unit is active.

Initialisation (``default_init = "uniform"``, ``weight_hh_uniform``): ``weight_hh`` from
U(0, 1), the paper's setting when the sequence length is not known; the other parameters
U(−1/√H, 1/√H) as PyTorch's. For a known length T the paper draws ``weight_hh`` from
U(0, 2^(1/T)) and keeps ``|weight_hh| ≤ 2^(1/T)`` during training — a constraint the
training loop applies (clamp ``weight_hh`` after each optimiser step), not the cell, which
declares it (``recurrent_weight_limit``; the memory tasks apply it).
``init="identity"`` and ``"orthogonal"`` set u = 1 (see :mod:`rnnkit.layers.init`).

Backward, the forward read in reverse::

    da = dh ⊙ [h_t > 0]
    dh_{t-1} = da ⊙ weight_hh,      dweight_hh = Σ_t da ⊙ h_{t-1}
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, per_step, stacked


class IndRNNCache(NamedTuple):
    h_prev: Tensor      # (n, H)
    h: Tensor           # (n, H) relu(a_t)


class IndRNNFactors(NamedTuple):
    relu_grad: Tensor   # (n, H) relu'(a_t) = [h_t > 0]


class IndRNNCell(Cell):
    """IndRNN step ``h = relu(xw + weight_hh ⊙ h_prev)`` with a (H,) recurrent weight."""

    name = "indrnn"
    gates = 1
    gate_names = ("hidden",)
    num_states = 1
    fold_bias_hh = True
    h_prev_in_product_only = True       # h_{t-1} enters only through weight_hh ⊙ h_{t-1}
    weight_hh_uniform = (0.0, 1.0)      # the paper's u ~ U(0, 1)

    def weight_hh_shape(self, hidden_size):
        return (hidden_size,)                               # u: one weight per unit

    def recurrent_weight_limit(self, length):
        return 2.0 ** (1.0 / length)                        # |u| ≤ 2^(1/T): growth ≤ 2 over T

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        (h_prev,) = state                                   # (n, H)
        a = torch.addcmul(xw, weight_hh, h_prev)            # W x_t + b + u ⊙ h_{t-1}
        if bias_hh is not None:
            a = a + bias_hh
        h = a.relu()                                        # (n, H)
        return (h,), IndRNNCache(h_prev, h)

    def prepare_backward(self, caches, *extra):
        h = stacked(caches, "h")                            # (N, H)
        return per_step(caches, IndRNNFactors, (h > 0).to(h.dtype))   # relu'(a_t), all t

    def step_backward(self, dstate, cache, weight_hh, *extra):
        (dh,) = dstate                                      # (n, H)
        da = dh * cache.relu_grad                           # dL/da = dh ⊙ relu'(a)
        dh_prev = da * weight_hh                            # dL/dh_{t-1} = da ⊙ u
        return (dh_prev,), da, da

    def param_backward(self, dhw, caches, *extra):
        h_prev = stacked(caches, "h_prev")                  # (N, H)
        return ((dhw * h_prev).sum(0),)                     # dL/du = Σ_t da ⊙ h_{t-1}  (H,)

    def __repr__(self):
        return "IndRNNCell()"

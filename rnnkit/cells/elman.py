"""Elman RNN cell: the simple recurrent network.

Equations (code symbols; textbook names in brackets)::

    a_t = x_t @ weight_ih.T + bias_ih + h_{t-1} @ weight_hh.T + bias_hh     (n, H)
    h_t = f(a_t)          f in {tanh, relu, sigmoid}

    [textbook]  h_t = f(U x_t + W h_{t-1} + b),  U = weight_ih (H, I),  W = weight_hh (H, H),
                b = bias_ih + bias_hh;  the output layer y_t = softmax(V h_t) lives in the model.

``tanh`` and ``relu`` are ``torch.nn.RNN``'s two nonlinearities (same parameters, same
results); ``sigmoid`` is the hidden layer of Mikolov's RNNLM (Mikolov et al., 2010) and
has no PyTorch kernel. With ``relu`` and an identity ``weight_hh`` this is the IRNN of
Le, Jaitly & Hinton (2015).

Backward, the forward read in reverse::

    da     = dh ⊙ f'(a)          with f' written through the output: 1 − h², [h > 0], h(1 − h)
    dh_prev = da @ weight_hh
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, per_step, stacked


class ElmanCache(NamedTuple):
    h_prev: Tensor      # (n, H)
    h: Tensor           # (n, H) f(a_t)


class ElmanFactors(NamedTuple):
    f_grad: Tensor      # (n, H) f'(a_t), written through the output


def _tanh_grad(h: Tensor) -> Tensor:
    return 1 - h * h


def _relu_grad(h: Tensor) -> Tensor:
    return (h > 0).to(h.dtype)


def _sigmoid_grad(h: Tensor) -> Tensor:
    return h * (1 - h)


# nonlinearity -> (f, f' as a function of f's output, PyTorch's fused kernel)
NONLINEARITIES = {
    "tanh": (torch.tanh, _tanh_grad, "RNN_TANH"),
    "relu": (torch.relu, _relu_grad, "RNN_RELU"),
    "sigmoid": (torch.sigmoid, _sigmoid_grad, None),
}


class ElmanCell(Cell):
    """Elman RNN step ``h = f(xw + h_prev @ weight_hh.T)``; ``f`` one of NONLINEARITIES."""

    gates = 1
    num_states = 1
    fold_bias_hh = True
    h_prev_in_product_only = True

    def __init__(self, nonlinearity: str = "tanh", default_init: str = "uniform"):
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity: expected one of {sorted(NONLINEARITIES)}, got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.f, self.f_grad, self.native_mode = NONLINEARITIES[nonlinearity]
        self.default_init = default_init
        self.name = "irnn" if default_init == "identity" else f"rnn_{nonlinearity}"

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        (h_prev,) = state                                   # (n, H)
        a = torch.addmm(xw, h_prev, weight_hh.t())          # (n, H)
        if bias_hh is not None:
            a = a + bias_hh
        h = self.f(a)                                       # (n, H)
        return (h,), ElmanCache(h_prev, h)

    def prepare_backward(self, caches, *extra):
        return per_step(caches, ElmanFactors, self.f_grad(stacked(caches, "h")))  # f'(a_t), all t

    def step_backward(self, dstate, cache, weight_hh, *extra):
        (dh,) = dstate
        da = dh * cache.f_grad                              # dL/da = dh ⊙ f'(a)
        dh_prev = da @ weight_hh                            # dL/dh_prev = da W
        return (dh_prev,), da, da

    def __repr__(self):
        if self.default_init != "uniform":
            return f"ElmanCell({self.nonlinearity!r}, default_init={self.default_init!r})"
        return f"ElmanCell(nonlinearity={self.nonlinearity!r})"


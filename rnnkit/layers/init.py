"""Initialisation schemes for recurrent layers — the first defence against exploding and
vanishing gradients.

- ``"uniform"``    PyTorch's default: every parameter U(−1/√H, 1/√H) — but ``weight_hh``
                   where the cell declares a range of its own (``Cell.weight_hh_uniform``;
                   IndRNN: U(0, 1)).
- ``"orthogonal"`` each gate's block of ``weight_hh`` an orthogonal H×H matrix (Saxe et al.
                   2014), ``weight_ih`` Glorot-uniform per gate block, biases zero.
- ``"identity"``   the IRNN of Le, Jaitly & Hinton (2015): ``weight_hh`` = I per gate block,
                   ``weight_ih`` N(0, 0.001²), biases zero; meant for ReLU Elman networks.

A diagonal recurrent weight (a (G*H,) vector ``u``, the recurrence ``u ⊙ h_{t-1}``) is the
diagonal of the matrix: ``"identity"`` and ``"orthogonal"`` both set u = 1 (a diagonal
matrix is orthogonal only with entries ±1). A cell without a recurrent weight skips it.

``forget_bias`` (cells with a forget gate) sets the forget gate's total bias — ``bias_ih_f + bias_hh_f`` —
to that value (Jozefowicz et al. 2015 recommend 1): ``bias_ih_f = forget_bias``,
``bias_hh_f = 0``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

INIT_SCHEMES = ("uniform", "orthogonal", "identity")


def check_init(init: str) -> None:
    if init not in INIT_SCHEMES:
        raise ValueError(f"init: expected one of {list(INIT_SCHEMES)}, got {init!r}")


@torch.no_grad()
def init_layer(init: str, hidden_size: int, weight_ih: torch.Tensor,
               weight_hh: torch.Tensor | None, biases: list[torch.Tensor],
               extra: list[torch.Tensor], *,
               weight_hh_uniform: tuple[float, float] | None = None) -> None:
    """Initialise one layer-direction's parameters in place (shapes as in ``torch.nn``;
    ``weight_hh`` a matrix, a vector or None as the cell declares it; ``weight_hh_uniform``
    the cell's own range for it under "uniform")."""
    H = hidden_size
    if init == "uniform":
        bound = 1.0 / math.sqrt(H)
        for p in (weight_ih, *biases, *extra):
            nn.init.uniform_(p, -bound, bound)
        if weight_hh is not None:
            nn.init.uniform_(weight_hh, *(weight_hh_uniform or (-bound, bound)))
        return
    if weight_hh is not None and weight_hh.dim() == 1:      # diagonal: u = diag(I)
        weight_hh.fill_(1.0)
    elif weight_hh is not None:
        for block in weight_hh.split(H):                    # one (H, H) block per gate
            if init == "orthogonal":
                nn.init.orthogonal_(block)
            else:
                block.copy_(torch.eye(H, dtype=block.dtype, device=block.device))
    for block in weight_ih.split(H):
        if init == "orthogonal":
            nn.init.xavier_uniform_(block)
        else:
            nn.init.normal_(block, 0.0, 1e-3)
    for p in (*biases, *extra):
        p.zero_()


@torch.no_grad()
def set_forget_bias(value: float, hidden_size: int, block: int, bias_ih: torch.Tensor,
                    bias_hh: torch.Tensor | None) -> None:
    """Make the forget gate's total bias ``value``; ``block`` is its index among the gate
    blocks (1 in the LSTM's i, f, g, o); ``bias_hh`` None for a cell without one."""
    H = hidden_size
    bias_ih[block * H:(block + 1) * H] = value
    if bias_hh is not None:
        bias_hh[block * H:(block + 1) * H] = 0.0

"""Initialisation schemes for recurrent layers — the first defence against exploding and
vanishing gradients.

- ``"uniform"``    PyTorch's default: every parameter U(−1/√H, 1/√H).
- ``"orthogonal"`` each gate's block of ``weight_hh`` an orthogonal H×H matrix (Saxe et al.
                   2014), ``weight_ih`` Glorot-uniform per gate block, biases zero.
- ``"identity"``   the IRNN of Le, Jaitly & Hinton (2015): ``weight_hh`` = I per gate block,
                   ``weight_ih`` N(0, 0.001²), biases zero; meant for ReLU Elman networks.

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
def init_layer(init: str, hidden_size: int, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
               biases: list[torch.Tensor], extra: list[torch.Tensor]) -> None:
    """Initialise one layer-direction's parameters in place (shapes as in ``torch.nn``)."""
    H = hidden_size
    if init == "uniform":
        bound = 1.0 / math.sqrt(H)
        for p in (weight_ih, weight_hh, *biases, *extra):
            nn.init.uniform_(p, -bound, bound)
        return
    for block in weight_hh.split(H):                        # one (H, H) block per gate
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
                    bias_hh: torch.Tensor) -> None:
    """Make the forget gate's total bias ``value``; ``block`` is its index among the gate
    blocks (1 in the LSTM's i, f, g, o)."""
    H = hidden_size
    bias_ih[block * H:(block + 1) * H] = value
    bias_hh[block * H:(block + 1) * H] = 0.0

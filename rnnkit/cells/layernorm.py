"""Layer normalisation over blocks of features, forward and hand backward (Ba, Kiros &
Hinton 2016, "Layer Normalization"), shared by the layer-normalised cells.

A (n, K*H) pre-activation is K blocks of H features (the gates of a cell); each row's
block k is normalised on its own, as ``torch.nn.functional.layer_norm`` over the last
dimension of its (n, K, H) view::

    μ = mean_H(a)        σ² = mean_H((a − μ)²)   (the biased variance, as torch)
    â = (a − μ) / sqrt(σ² + ε)                  ε = 1e-5, inside the square root

The gain and bias (γ ⊙ â + β) are the cells' own lines; these helpers only normalise. The
backward of â = (a − μ) · r with r = 1/sqrt(σ² + ε) is::

    dL/da = r ⊙ (dâ − mean_H(dâ) − â ⊙ mean_H(dâ ⊙ â))

(the mean term because μ moves with every a_j, the last because σ² does).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-5      # as torch.nn.LayerNorm's default


def normalize(a: Tensor, blocks: int) -> tuple[Tensor, Tensor]:
    """(n, K*H) -> â (n, K*H) normalised per block of H, and r = 1/sqrt(σ² + ε) (n, K, 1).

    PyTorch's fused layer-norm kernel without gain and bias computes the module
    docstring's μ, σ² and â in one pass (several times faster on the CPU than var_mean).
    """
    a3 = a.view(a.shape[0], blocks, -1)                     # (n, K, H)
    a_hat, _, rstd = torch.native_layer_norm(a3, a3.shape[-1:], None, None, EPS)
    return a_hat.view_as(a), rstd                           # rstd: (n, K, 1)


def normalize_backward(da_hat: Tensor, a_hat: Tensor, rstd: Tensor) -> Tensor:
    """dL/dâ -> dL/da for :func:`normalize` (shapes as its output): over each block,
    dL/da = r ⊙ (dâ − mean(dâ) − â ⊙ mean(dâ ⊙ â))."""
    n, blocks = rstd.shape[0], rstd.shape[1]
    d3 = da_hat.view(n, blocks, -1)                         # (n, K, H)
    x3 = a_hat.view(n, blocks, -1)
    mean_d = d3.mean(-1, keepdim=True)                      # mean(dâ)
    mean_dx = (d3 * x3).mean(-1, keepdim=True)              # mean(dâ ⊙ â)
    return torch.addcmul(d3 - mean_d, x3, mean_dx, value=-1).mul_(rstd).view_as(da_hat)


def normalize_products(xw: Tensor, h_prev: Tensor, weight_hh: Tensor, bias_hh: Tensor | None,
                       blocks: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The two normalised pre-activations of a layer-normalised cell, per gate block:
    N(xw) and N(hw) with hw = h_{t-1} @ weight_hh.T + bias_hh, each with its r (n, K, 1)."""
    if bias_hh is None:
        hw = h_prev @ weight_hh.t()                         # (n, K*H)
    else:
        hw = torch.addmm(bias_hh, h_prev, weight_hh.t())
    return (*normalize(xw, blocks), *normalize(hw, blocks))

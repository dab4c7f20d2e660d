"""Layer-normalised GRU, the reset gate after the recurrent product (Ba, Kiros & Hinton 2016,
"Layer Normalization"; the equations of the authors' own LN-GRU, see below).

Gate order r, z, n, as ``torch.nn.GRU``. With ``N(·)`` the normalisation of each gate block
of H features on its own (mean 0, variance 1, ε = 1e-5; :mod:`rnnkit.cells.layernorm`)::

    xw = x_t @ weight_ih.T + bias_ih                       (n, 3H), by the engine
    hw = h_{t-1} @ weight_hh.T + bias_hh                   (n, 3H)
    ax = γ_x ⊙ N(xw) + β_x      ah = γ_h ⊙ N(hw) + β_h     r, z, n blocks each
    r = σ(ax_r + ah_r)                                     reset gate
    z = σ(ax_z + ah_z)                                     update gate
    n = tanh(ax_n + r ⊙ ah_n)                              candidate, reset after the product
    h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}

In the backward's comments ``N'ᵀ(d)`` is the gradient through N (``normalize_backward``).

This is ``torch.nn.GRU``'s cell with each of its two products replaced by its normalised
version, ``x W_ih.T + b_ih`` by ax and ``h W_hh.T + b_hh`` by ah, so that β_hn stands where
torch's b_hn does, inside ``r ⊙ (…)``. The reset gate multiplies the *normalised* recurrent
product as in the authors' code (github.com/ryankiros/layer-norm, ``lngru_layer``:
``tanh(LN(x W_x + b_x) + r ⊙ LN(h U_x))``) and in haste's ``LayerNormGRU``; the authors
normalise the r and z blocks together, here every block has statistics of its own, as in
:mod:`rnnkit.cells.layernorm_lstm`. The update convention (z here = 1 − u of Cho et al.) is
:mod:`rnnkit.cells.gru`'s.

Parameters: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` and ``bias_hh`` (3H,)
as in ``torch.nn.GRU``; the extra ones, the layer norms' gains and biases named scale and
shift (``bias=False`` drops torch's two biases, not these): ``ln_scale_ih`` γ_x,
``ln_shift_ih`` β_x, ``ln_scale_hh`` γ_h, ``ln_shift_hh`` β_h, (3H,) each. ``bias_ih`` and
``bias_hh`` sit before their normalisation, as the authors' b_x does: each block's mean of
them is cancelled, the rest shifts the pattern that is normalised; ``bias=False`` gives the
cell without them. (``bias_hh`` stays inside the recurrent pre-activation so that the
engine's rule ``dL/dbias_hh = Σ dhw`` holds.)

Initialisation: the scales start at 1 and the shifts at 0, as in the paper, whatever the
layer's scheme (``extra_param_values``); the scheme initialises the weights and biases.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, per_step, stacked
from rnnkit.cells.layernorm import normalize_backward, normalize_products


class LayerNormGRUCache(NamedTuple):
    """What one forward step keeps."""

    h_prev: Tensor      # (n, H)
    rz: Tensor          # (n, 2H) the reset and update gates, [r | z]
    n: Tensor           # (n, H) candidate
    ah_n: Tensor        # (n, H) γ_hn ⊙ N(hw)_n + β_hn, what r multiplies
    x_hat: Tensor       # (n, 3H) N(xw)
    rstd_x: Tensor      # (n, 3, 1) 1/sqrt(σ² + ε) of each block of xw
    h_hat: Tensor       # (n, 3H) N(hw)
    rstd_h: Tensor      # (n, 3, 1)


class LayerNormGRUFactors(NamedTuple):
    """The backward's per-step factors, from :meth:`LayerNormGRUCell.prepare_backward`."""

    F_x: Tensor         # (n, 3H) dL/dax = [dh, dh, dh] ⊙ F_x
    F_h: Tensor         # (n, 3H) dL/dah = [dh, dh, dh] ⊙ F_h
    z: Tensor           # (n, H) the direct path dh_{t-1} += z ⊙ dh
    cache: LayerNormGRUCache    # the step's forward cache (normalised values)


class LayerNormGRUCell(Cell):
    """Layer-normalised GRU step, reset gate after the recurrent product (see the module)."""

    name = "layernorm_gru"
    gates = 3
    gate_names = ("reset", "update", "candidate")
    num_states = 1
    fold_bias_hh = False    # bias_hh is normalised with h W.T, not with the input projection
    biases_shift_gates = False      # normalised away per block
    extra_param_values = {"ln_scale_ih": 1.0, "ln_shift_ih": 0.0, "ln_scale_hh": 1.0,
                          "ln_shift_hh": 0.0}

    def extra_param_shapes(self, hidden_size):
        G, H = self.gates, hidden_size
        return {"ln_scale_ih": (G * H,), "ln_shift_ih": (G * H,),
                "ln_scale_hh": (G * H,), "ln_shift_hh": (G * H,)}

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        w_x, b_x, w_h, b_h = extra                          # γ_x, β_x, γ_h, β_h
        (h_prev,) = state                                   # (n, H)
        H = h_prev.shape[1]
        x_hat, rstd_x, h_hat, rstd_h = normalize_products(xw, h_prev, weight_hh, bias_hh, 3)
        ax = torch.addcmul(b_x, x_hat, w_x)                 # γ_x ⊙ N(xw) + β_x   (n, 3H)
        ah = torch.addcmul(b_h, h_hat, w_h)                 # γ_h ⊙ N(hw) + β_h
        rz = (ax[:, :2 * H] + ah[:, :2 * H]).sigmoid()      # (n, 2H)
        r, z = rz.chunk(2, 1)
        ah_n = ah[:, 2 * H:]
        cand = (ax[:, 2 * H:] + r * ah_n).tanh()            # n = tanh(ax_n + r ⊙ ah_n)
        h = cand + z * (h_prev - cand)                      # (1 − z) n + z h_{t-1}
        return (h,), LayerNormGRUCache(h_prev, rz, cand, ah_n, x_hat, rstd_x, h_hat, rstd_h)

    def prepare_backward(self, caches, *extra):
        """Per-step factors of the backward, for all steps at once (see step_backward)."""
        h_prev, rz, cand, ah_n = (stacked(caches, k) for k in ("h_prev", "rz", "n", "ah_n"))
        r, z = rz.chunk(2, 1)
        F_n = (1 - z) * (1 - cand * cand)                   # dax_n = dh (1 − z) tanh'
        F_r = F_n * ah_n * r * (1 - r)                      # da_r = dax_n ah_n σ'(r)
        F_z = (h_prev - cand) * z * (1 - z)                 # da_z = dh (h_{t-1} − n) σ'(z)
        F_x = torch.cat([F_r, F_z, F_n], 1)                 # dax = [dh, dh, dh] ⊙ F_x
        F_h = torch.cat([F_r, F_z, F_n * r], 1)             # dah: the n block passes r
        return [LayerNormGRUFactors(*parts, cache) for parts, cache in
                zip(per_step(caches, F_x, F_h, z), caches)]

    def step_backward(self, dstate, factors, weight_hh, *extra):
        w_x, _, w_h, _ = extra                              # γ_x, γ_h
        cache = factors.cache
        (dh,) = dstate                                      # (n, H)
        dh3 = torch.cat([dh, dh, dh], 1)                    # (n, 3H)
        dax = dh3 * factors.F_x                             # dL/dax
        dah = dh3.mul_(factors.F_h)                         # dL/dah
        dxw = normalize_backward(dax * w_x, cache.x_hat, cache.rstd_x)  # dL/dxw = N'ᵀ(dax ⊙ γ_x)
        dhw = normalize_backward(dah * w_h, cache.h_hat, cache.rstd_h)  # dL/dhw = N'ᵀ(dah ⊙ γ_h)
        dh_prev = torch.addmm(dh * factors.z, dhw, weight_hh)  # direct path z ⊙ dh, plus dhw W
        return (dh_prev,), dxw, dhw, torch.cat([dax, dah], 1)   # kept for the gains (n, 6H)

    def param_backward(self, dhw, caches, *extra, kept=None):
        """dweight_hh = dhwᵀ h_{t-1}, and the layer norms' gains and biases, each one sum over
        the stacked time axis of ``kept``, the dL/dax and dL/dah that step_backward returned (they
        cannot be recovered from dhw)."""
        (dweight_hh,) = super().param_backward(dhw, caches)
        dax, dah = kept.chunk(2, 1)                         # (N, 3H) each
        x_hat, h_hat = stacked(caches, "x_hat"), stacked(caches, "h_hat")
        return (dweight_hh,
                (dax * x_hat).sum(0), dax.sum(0),           # dL/dγ_x = Σ dax ⊙ N(xw), dL/dβ_x
                (dah * h_hat).sum(0), dah.sum(0))           # dL/dγ_h = Σ dah ⊙ N(hw), dL/dβ_h

    # -- diagnostics hooks -------------------------------------------------------------------

    def gate_activations(self, cache):
        reset, update = cache.rz.chunk(2, 1)
        return {"reset": reset, "update": update}

    def __repr__(self):
        return "LayerNormGRUCell()"

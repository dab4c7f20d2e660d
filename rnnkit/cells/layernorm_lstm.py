"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016, "Layer Normalization", §3.1 and the
LN-LSTM of the supplementary material).

Gate order i, f, g, o, as ``torch.nn.LSTM``. With ``N(·)`` the normalisation of each gate
block of H features on its own (mean 0, variance 1, ε = 1e-5; :mod:`rnnkit.cells.layernorm`)::

    xw = x_t @ weight_ih.T + bias_ih                       (n, 4H), by the engine
    hw = h_{t-1} @ weight_hh.T + bias_hh                   (n, 4H)
    a  = γ_x ⊙ N(xw) + β_x + γ_h ⊙ N(hw) + β_h             i, f, g, o blocks
    i, f, o = σ(a_i), σ(a_f), σ(a_o)        g = tanh(a_g)
    c_t = f ⊙ c_{t-1} + i ⊙ g                              the carried cell, not normalised
    u = γ_c ⊙ N(c_t) + β_c
    h_t = o ⊙ tanh(u)

In the backward's comments ``N'ᵀ(d)`` is the gradient through N (``normalize_backward``).

Parameters: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih`` and ``bias_hh``
(4H,) as in ``torch.nn.LSTM``; the extra ones, the gains and biases of the paper's three
layer norms, named scale and shift (``bias=False`` drops torch's two biases, not these):
``ln_scale_ih`` γ_x and ``ln_shift_ih`` β_x (4H,), ``ln_scale_hh`` γ_h and ``ln_shift_hh``
β_h (4H,), ``ln_scale_c`` γ_c and ``ln_shift_c`` β_c (H,).

The biases. The paper's pre-activation is ``LN(W_h h) + LN(W_x x) + b``; its b is the sum
β_x + β_h here (only the sum of the two matters, as with torch's bias_ih + bias_hh).
``bias_ih`` and ``bias_hh`` sit *before* their normalisation — where the authors' own code
(github.com/ryankiros/layer-norm, ``lnlstm_layer``) adds its b to ``x W`` too. There each
block's mean of a bias is cancelled (a constant per block changes nothing, so
``forget_bias`` has no effect on this cell), the rest shifts the pattern that is
normalised; ``bias=False`` gives the paper's cell exactly. The engine's rule
``dL/dbias_hh = Σ dhw`` holds because bias_hh stays inside the recurrent pre-activation.

Textbook names: U_k the rows of ``weight_ih`` for gate k, W_k those of ``weight_hh``.

Initialisation: the scales start at 1 and the shifts at 0, as in the paper, whatever the
layer's scheme (``extra_param_values``); the scheme initialises the weights and biases.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, per_step, stacked
from rnnkit.cells.layernorm import normalize, normalize_backward, normalize_products
from rnnkit.cells.lstm import gate_factors


class LayerNormLSTMCache(NamedTuple):
    """What one forward step keeps: the previous state, the normalised values, the gates."""

    h_prev: Tensor      # (n, H)
    c_prev: Tensor      # (n, H)
    x_hat: Tensor       # (n, 4H) N(xw)
    rstd_x: Tensor      # (n, 4, 1) 1/sqrt(σ² + ε) of each block of xw
    h_hat: Tensor       # (n, 4H) N(hw)
    rstd_h: Tensor      # (n, 4, 1)
    gates: Tensor       # (n, 4H) σ(a_i), σ(a_f), (unused slot), σ(a_o)
    g: Tensor           # (n, H) candidate
    c: Tensor           # (n, H) c_t
    c_hat: Tensor       # (n, H) N(c_t)
    rstd_c: Tensor      # (n, 1, 1)
    tanh_u: Tensor      # (n, H) tanh(u), u = γ_c ⊙ N(c_t) + β_c


class LayerNormLSTMFactors(NamedTuple):
    """The backward's per-step factors, from :meth:`LayerNormLSTMCell.prepare_backward`."""

    F: Tensor           # (n, 4H) dL/da = [dc, dc, dc, dh] ⊙ F
    du_dh: Tensor       # (n, H) dL/du = dh ⊙ o ⊙ (1 − tanh²u)
    dchat_dh: Tensor    # (n, H) dL/dN(c) = dh ⊙ o ⊙ (1 − tanh²u) ⊙ γ_c
    f: Tensor           # (n, H) dc_{t-1} = dc ⊙ f
    cache: LayerNormLSTMCache   # the step's forward cache (normalised values)


class LayerNormLSTMCell(Cell):
    """Layer-normalised LSTM step on states ``(h, c)`` (see the module docstring)."""

    name = "layernorm_lstm"
    gates = 4
    gate_names = ("input", "forget", "candidate", "output")
    num_states = 2
    state_names = ("h", "c")
    fold_bias_hh = False    # bias_hh is normalised with h W.T, not with the input projection
    h_prev_in_product_only = True
    biases_shift_gates = False      # normalised away per block: forget_bias would do nothing
    extra_param_values = {"ln_scale_ih": 1.0, "ln_shift_ih": 0.0, "ln_scale_hh": 1.0,
                          "ln_shift_hh": 0.0, "ln_scale_c": 1.0, "ln_shift_c": 0.0}

    def extra_param_shapes(self, hidden_size):
        G, H = self.gates, hidden_size
        return {"ln_scale_ih": (G * H,), "ln_shift_ih": (G * H,),
                "ln_scale_hh": (G * H,), "ln_shift_hh": (G * H,),
                "ln_scale_c": (H,), "ln_shift_c": (H,)}

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        w_x, b_x, w_h, b_h, w_c, b_c = extra                # γ_x, β_x, γ_h, β_h, γ_c, β_c
        h_prev, c_prev = state                              # (n, H) each
        H = c_prev.shape[1]
        x_hat, rstd_x, h_hat, rstd_h = normalize_products(xw, h_prev, weight_hh, bias_hh, 4)
        a = torch.addcmul(b_x + b_h, x_hat, w_x).addcmul_(h_hat, w_h)  # (n, 4H)
        sig = a.sigmoid()                                   # i, f, o in one call (g unused)
        i, f, _, o = sig.chunk(4, 1)
        g = a[:, 2 * H:3 * H].tanh()
        c = torch.addcmul(f * c_prev, i, g)                 # c_t = f ⊙ c_{t-1} + i ⊙ g
        c_hat, rstd_c = normalize(c, 1)                     # N(c_t)
        tu = torch.addcmul(b_c, c_hat, w_c).tanh()          # tanh(u), u = γ_c ⊙ N(c_t) + β_c
        h = o * tu                                          # h_t = o ⊙ tanh(u)
        return (h, c), LayerNormLSTMCache(h_prev, c_prev, x_hat, rstd_x, h_hat, rstd_h, sig,
                                          g, c, c_hat, rstd_c, tu)

    def prepare_backward(self, caches, *extra):
        """Per-step factors of the backward, for all steps at once (see step_backward)."""
        w_c = extra[4]                                      # γ_c
        c_prev, sig, g, tu = (stacked(caches, k) for k in ("c_prev", "gates", "g", "tanh_u"))
        H = g.shape[1]
        f, o = sig[:, H:2 * H], sig[:, 3 * H:]
        F = gate_factors(sig, g, c_prev, tu)                # da = [dc, dc, dc, dh] ⊙ F
        du_dh = o * (1 - tu * tu)                           # du = dh ⊙ o ⊙ (1 − tanh²u)
        return [LayerNormLSTMFactors(*parts, cache) for parts, cache in
                zip(per_step(caches, F, du_dh, du_dh * w_c, f), caches)]

    def step_backward(self, dstate, factors, weight_hh, *extra):
        w_x, _, w_h, _, _, _ = extra                        # γ_x, γ_h
        cache = factors.cache
        dh, dc_next = dstate                                # (n, H) each
        du = dh * factors.du_dh                             # dL/du = dh ⊙ o ⊙ (1 − tanh²u)
        dc_hat = dh * factors.dchat_dh                      # dL/dN(c) = du ⊙ γ_c
        dc = normalize_backward(dc_hat, cache.c_hat, cache.rstd_c).add_(dc_next)
        #                                                     dL/dc = N'ᵀ dN(c) + dc_next
        da = torch.cat([dc, dc, dc, dh], 1).mul_(factors.F)  # dL/da for i, f, g, o   (n, 4H)
        dxw = normalize_backward(da * w_x, cache.x_hat, cache.rstd_x)  # dL/dxw = N'ᵀ(da ⊙ γ_x)
        dhw = normalize_backward(da * w_h, cache.h_hat, cache.rstd_h)  # dL/dhw = N'ᵀ(da ⊙ γ_h)
        dh_prev = dhw @ weight_hh                           # dL/dh_{t-1} = dhw W
        dc_prev = dc * factors.f                            # dL/dc_{t-1} = dc ⊙ f
        kept = torch.cat([da, du], 1)                       # for the gains: (n, 5H)
        return (dh_prev, dc_prev), dxw, dhw, kept

    def param_backward(self, dhw, caches, *extra, kept=None):
        """dweight_hh = dhwᵀ h_{t-1}, and the layer norms' gains and biases, each one sum over
        the stacked time axis of ``kept``, the dL/da and dL/du that step_backward returned (they
        cannot be recovered from dhw)."""
        (dweight_hh,) = super().param_backward(dhw, caches)
        H = dhw.shape[1] // 4
        da, du = kept[:, :4 * H], kept[:, 4 * H:]           # (N, 4H), (N, H)
        x_hat, h_hat, c_hat = (stacked(caches, k) for k in ("x_hat", "h_hat", "c_hat"))
        dbias = da.sum(0)                                   # dL/dβ_x = dL/dβ_h = Σ da
        return (dweight_hh,
                (da * x_hat).sum(0), dbias,                 # dL/dγ_x = Σ da ⊙ N(xw)
                (da * h_hat).sum(0), dbias.clone(),         # dL/dγ_h = Σ da ⊙ N(hw)
                (du * c_hat).sum(0), du.sum(0))             # dL/dγ_c = Σ du ⊙ N(c), dL/dβ_c

    # -- diagnostics hooks -------------------------------------------------------------------

    def gate_activations(self, cache):
        i, f, _, o = cache.gates.chunk(4, 1)
        return {"input": i, "forget": f, "output": o}

    def state_activations(self, cache):
        return {"cell": cache.c}                            # the carried c_t, not N(c_t)

    def full_state_grad(self, dstate, factors):
        dh, dc_next = dstate
        cache = factors.cache
        return dh, dc_next + normalize_backward(dh * factors.dchat_dh, cache.c_hat,
                                                cache.rstd_c)   # the dc of step_backward

    def __repr__(self):
        return "LayerNormLSTMCell()"

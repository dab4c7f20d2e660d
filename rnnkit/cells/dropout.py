"""Zoneout and variational recurrent dropout: training-time noise inside the recurrence,
as wrappers that give any cell the option (``make_cell("lstm", zoneout=0.1)``).

**Zoneout** (Krueger et al. 2016, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
Activations"): every unit of every state keeps its previous value with probability p::

    s̃_t = cell(x_t, s_{t-1})                    the wrapped cell's new state (h, c, …)
    s_t = d_t ⊙ s_{t-1} + (1 − d_t) ⊙ s̃_t       training: d_t ~ Bernoulli(p), per unit and step
    s_t = p s_{t-1} + (1 − p) s̃_t              evaluation: the expectation

Backward: ``ds̃ = (1 − d) ⊙ ds``, and ``ds_{t-1}`` gains ``d ⊙ ds`` besides the cell's own.

**Variational recurrent dropout** (Gal & Ghahramani 2016, "A Theoretically Grounded
Application of Dropout in Recurrent Neural Networks"): the recurrent input ``h_{t-1}`` is
multiplied by one mask per sequence, ``m ~ Bernoulli(1 − p) / (1 − p)`` of shape (B, H), the
same at every step; evaluation uses ``h_{t-1}`` as it is. Exact only for cells that read
``h_{t-1}`` through their recurrent product alone (Elman, LSTM — declared by the cell as
``h_prev_in_product_only``); a GRU also carries ``h_{t-1}`` past its gates (``z ⊙ h_{t-1}``),
where the mask would cut the memory path, so such cells refuse the option.

Both are exact on resume: masks come from PyTorch's global generator, whose state the train
state saves. The layer hands the engine ``cell.for_mode(training)`` once per layer and
direction, so each gets masks of its own; ``step`` (generation) uses evaluation mode.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, State


class ZoneoutCache(NamedTuple):
    h_prev: Tensor          # (n, H) the state before the step (for param_backward's order)
    inner: tuple            # the wrapped cell's cache
    keep: tuple             # per state: d_t (n, H) in training; the number p in evaluation


class ZoneoutFactors(NamedTuple):
    inner: tuple            # the wrapped cell's factors
    keep: tuple             # per state, as in the cache


class Wrapper(Cell):
    """A cell around another cell: copies its declarations, delegates what it does not
    change."""

    def __init__(self, inner: Cell):
        self.inner = inner
        for name in Cell.DECLARATIONS:
            setattr(self, name, getattr(inner, name))
        self.native_mode = None                 # PyTorch's kernels know no such noise
        self.training = False

    def for_mode(self, training: bool) -> Cell:
        """A copy for one layer-direction's forward in ``training`` mode, the cells it
        wraps too (fresh masks for each)."""
        cell = copy.copy(self)
        cell.inner = self.inner.for_mode(training)
        cell.training = training
        return cell

    def recurrent_weight_limit(self, length):
        return self.inner.recurrent_weight_limit(length)

    def initial_state(self, batch, hidden_size, *, dtype=None, device=None):
        return self.inner.initial_state(batch, hidden_size, dtype=dtype, device=device)

    def weight_hh_shape(self, hidden_size):
        return self.inner.weight_hh_shape(hidden_size)

    def extra_param_shapes(self, hidden_size):
        return self.inner.extra_param_shapes(hidden_size)

    def gate_activations(self, cache):
        return self.inner.gate_activations(cache.inner)

    def state_activations(self, cache):
        return self.inner.state_activations(cache.inner)


class Zoneout(Wrapper):
    """``inner`` with zoneout of probability ``p`` on every state (see the module)."""

    def __init__(self, inner: Cell, p: float):
        super().__init__(inner)
        self.p = float(p)
        self.name = f"{inner.name}+zoneout"

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        new, inner_cache = self.inner.step_forward(xw, state, weight_hh, bias_hh, *extra)
        if self.training:
            keep = tuple(torch.bernoulli(torch.full_like(s, self.p)) for s in new)  # d_t
        else:
            keep = (self.p,) * len(new)                     # no tensor per step to draw or fill
        zoned = tuple(torch.lerp(s_new, s_prev, d)           # d s_{t-1} + (1 − d) s̃_t
                      for s_new, s_prev, d in zip(new, state, keep))
        return zoned, ZoneoutCache(state[0], inner_cache, keep)

    def prepare_backward(self, caches, *extra):
        inner = self.inner.prepare_backward([c.inner for c in caches], *extra)
        return [ZoneoutFactors(f, c.keep) for f, c in zip(inner, caches)]

    def step_backward(self, dstate, cache, weight_hh, *extra):
        dnew = tuple(ds * (1 - d) for ds, d in zip(dstate, cache.keep))   # ds̃ = (1 − d) ds
        dprev, dxw, dhw, *kept = self.inner.step_backward(dnew, cache.inner, weight_hh, *extra)
        dprev = tuple(dp + d * ds                                           # + d ⊙ ds
                      for dp, ds, d in zip(dprev, dstate, cache.keep))
        return (dprev, dxw, dhw, *kept)

    def param_backward(self, dhw, caches, *extra, **kept):
        return self.inner.param_backward(dhw, [c.inner for c in caches], *extra, **kept)

    def full_state_grad(self, dstate: State, factors) -> State:
        return dstate           # the zoned state's gradient as the next step hands it

    def __repr__(self):
        return f"Zoneout({self.inner!r}, p={self.p})"


class RecurrentDropoutCache(NamedTuple):
    h_prev: Tensor          # (n, H) the masked h_{t-1} the cell read
    inner: tuple
    mask: Tensor | None     # (n, H) m; None in evaluation (h_{t-1} read as it is)


class RecurrentDropoutFactors(NamedTuple):
    inner: tuple
    mask: Tensor | None


class RecurrentDropout(Wrapper):
    """``inner`` reading ``h_{t-1} ⊙ m``, one mask per sequence (see the module)."""

    def __init__(self, inner: Cell, p: float):
        if not getattr(inner, "h_prev_in_product_only", False):
            raise ValueError(f"recurrent_dropout: the cell {inner!r} carries h_{{t-1}} outside "
                             f"its recurrent product, where one mask per sequence would cut "
                             f"its memory; use zoneout or weight_dropout instead")
        super().__init__(inner)
        self.p = float(p)
        self.name = f"{inner.name}+recurrent_dropout"
        self.mask: Tensor | None = None

    def _mask_rows(self, h_prev: Tensor) -> Tensor:
        """The first n rows of this forward's mask, drawn (or extended) on first need: a row
        is one example (the engine keeps rows in one order), the same at every step."""
        n = h_prev.shape[0]
        have = 0 if self.mask is None else self.mask.shape[0]
        if n > have:
            more = torch.bernoulli(h_prev.new_full((n - have, h_prev.shape[1]), 1 - self.p))
            more /= 1 - self.p
            self.mask = more if self.mask is None else torch.cat([self.mask, more])
        return self.mask[:n]

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        if not self.training or self.p == 0:
            new, inner_cache = self.inner.step_forward(xw, state, weight_hh, bias_hh, *extra)
            return new, RecurrentDropoutCache(state[0], inner_cache, None)
        mask = self._mask_rows(state[0])
        h_in = state[0] * mask                                       # h_{t-1} ⊙ m
        new, inner_cache = self.inner.step_forward(xw, (h_in, *state[1:]), weight_hh, bias_hh,
                                                   *extra)
        return new, RecurrentDropoutCache(h_in, inner_cache, mask)

    def prepare_backward(self, caches, *extra):
        inner = self.inner.prepare_backward([c.inner for c in caches], *extra)
        return [RecurrentDropoutFactors(f, c.mask) for f, c in zip(inner, caches)]

    def step_backward(self, dstate, cache, weight_hh, *extra):
        dprev, dxw, dhw, *kept = self.inner.step_backward(dstate, cache.inner, weight_hh,
                                                          *extra)
        dh_prev = dprev[0] if cache.mask is None else dprev[0] * cache.mask   # dh_in ⊙ m
        return ((dh_prev, *dprev[1:]), dxw, dhw, *kept)

    def param_backward(self, dhw, caches, *extra, **kept):
        return self.inner.param_backward(dhw, [c.inner for c in caches], *extra, **kept)

    def full_state_grad(self, dstate, factors):
        return self.inner.full_state_grad(dstate, factors.inner)

    def __repr__(self):
        return f"RecurrentDropout({self.inner!r}, p={self.p})"


def with_noise(cell: Cell, zoneout: float = 0.0, recurrent_dropout: float = 0.0) -> Cell:
    """``cell`` wrapped for the options given (none: the cell itself)."""
    for name, p in (("zoneout", zoneout), ("recurrent_dropout", recurrent_dropout)):
        if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1):
            raise ValueError(f"{name}: expected a number in [0, 1), got {p!r}")
    if recurrent_dropout:
        cell = RecurrentDropout(cell, recurrent_dropout)
    if zoneout:
        cell = Zoneout(cell, zoneout)
    return cell

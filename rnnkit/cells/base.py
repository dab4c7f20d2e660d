"""The contract every cell follows: one time step, forward and hand-derived backward.

A cell is the *math* of one step, with no parameters of its own: the layer owns the
parameters (named as in ``torch.nn``) and hands them to the cell. The engine in
``rnnkit.bptt`` unrolls any cell over time; it relies only on what is declared here.

Symbols used by every cell (shapes for ``n`` active rows at one step):

- ``xw``  (n, G*H) the input projection ``x_t @ weight_ih.T + bias_ih`` (plus ``bias_hh``
  when ``fold_bias_hh``), computed for all time steps at once by the engine;
- ``state`` a tuple of (n, H) tensors — ``(h,)`` or ``(h, c)``; ``state[0]`` is the output;
- ``cache`` whatever ``step_backward`` needs, kept by the engine between the passes;
- ``dxw`` (n, G*H) the gradient of the loss w.r.t. ``xw``;
- ``dhw`` (n, G*H) the gradient w.r.t. the recurrent pre-activation ``h_prev @ W.T + b_hh``
  (for most cells the same tensor as ``dxw``); ``bias_hh``'s gradient is ``dhw.sum(0)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

State = tuple[Tensor, ...]


class Cell(ABC):
    """One recurrent step: ``step_forward`` and, directly below it, ``step_backward``.

    Subclasses set the class attributes and implement the two step methods; the default
    ``param_backward`` covers cells whose recurrent product is ``h_prev @ weight_hh.T``.
    """

    name: str = "cell"
    gates: int = 1              # G: weight_ih is (G*H, I), weight_hh is (G*H, H)
    num_states: int = 1         # 1 for (h,), 2 for (h, c)
    fold_bias_hh: bool = True   # bias_hh may be added to the input projection up front
    native_mode: str | None = None  # name of PyTorch's fused kernel, if it computes this cell

    def extra_param_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """Parameters beyond torch's four (e.g. peepholes): ``{name: shape}``."""
        return {}

    @abstractmethod
    def step_forward(self, xw: Tensor, state: State, weight_hh: Tensor,
                     bias_hh: Tensor | None, *extra: Tensor) -> tuple[State, tuple]:
        """One step: (n, G*H) input projection and (n, H) states -> new states, cache."""

    @abstractmethod
    def step_backward(self, dstate: State, cache: tuple, weight_hh: Tensor,
                      *extra: Tensor) -> tuple[State, Tensor, Tensor]:
        """Gradient of one step: d(new state) -> (d(previous state), dxw, dhw)."""

    def param_backward(self, dhw: Tensor, caches: list[tuple],
                       *extra: Tensor) -> tuple[Tensor, ...]:
        """Gradients of weight_hh and the extra parameters for a whole sequence at once.

        ``dhw`` is (N, G*H) for all N packed (time, row) pairs; ``caches`` the per-step
        caches in the same order. The default needs ``cache[0] == h_prev``: one matrix
        product over the stacked time axis, ``dweight_hh = dhw.T @ h_prev`` (G*H, H).
        """
        h_prev = torch.cat([cache[0] for cache in caches])  # (N, H)
        return (dhw.t() @ h_prev,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

"""The contract every cell follows: one time step, forward and hand-derived backward.

A cell is the *math* of one step, with no parameters of its own: the layer owns the
parameters (named as in ``torch.nn``) and hands them to the cell. The engine in
``rnnkit.bptt`` unrolls any cell over time; it relies only on what is declared here.

Symbols used by every cell (shapes for ``n`` active rows at one step):

- ``xw``  (n, G*H) the input projection ``x_t @ weight_ih.T + bias_ih`` (plus ``bias_hh``
  when ``fold_bias_hh``), computed for all time steps at once by the engine;
- ``state`` a tuple of (n, H) tensors — ``(h,)`` or ``(h, c)``; ``state[0]`` is the output;
- ``cache`` what the step keeps for the backward; ``prepare_backward`` turns the caches of
  all steps into the per-step factors ``step_backward`` reads;
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
    gate_names: tuple[str, ...] = ("hidden",)   # the G blocks of the weights, in order
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

    def prepare_backward(self, caches: list[tuple], *extra: Tensor) -> list[tuple]:
        """Turn the forward's per-step caches into what ``step_backward`` reads.

        Called once per sequence before the backward loop. Every factor of the backward
        that depends only on forward values (the gates' derivatives, products of
        activations) is computed here for all time steps in one vectorised pass, so the
        loop over time does only what the recurrence forces: a few products with the
        incoming gradient and one matrix product. The default keeps the caches as they are.
        """
        return caches

    @abstractmethod
    def step_backward(self, dstate: State, cache: tuple, weight_hh: Tensor,
                      *extra: Tensor) -> tuple[State, Tensor, Tensor]:
        """Gradient of one step: d(new state) -> (d(previous state), dxw, dhw).

        ``cache`` is that step's entry of :meth:`prepare_backward`'s result.
        """

    def gate_activations(self, cache: tuple) -> dict[str, Tensor]:
        """The sigmoid gates' values at one step, by name, (n, H) each (for diagnostics)."""
        return {}

    def full_state_grad(self, dstate: State, cache: tuple) -> State:
        """dL/d(state at t) in full, from what ``step_backward`` receives (for diagnostics).

        ``dstate[0]`` is already complete; a cell whose other states also feed its own
        output (the LSTM's c through h = o tanh c) adds that path here.
        """
        return dstate

    def param_backward(self, dhw: Tensor, caches: list[tuple],
                       *extra: Tensor) -> tuple[Tensor, ...]:
        """Gradients of weight_hh and the extra parameters for a whole sequence at once.

        ``dhw`` is (N, G*H) for all N packed (time, row) pairs; ``caches`` the per-step
        caches in the same order. The default needs ``cache[0] == h_prev``: one matrix
        product over the stacked time axis, ``dweight_hh = dhw.T @ h_prev`` (G*H, H).
        """
        return (dhw.t() @ stacked(caches, 0),)             # (G*H, N) @ (N, H)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def stacked(caches: list[tuple], k: int) -> Tensor:
    """Field ``k`` of every step's cache, stacked along the packed time axis: (N, ·)."""
    return torch.cat([cache[k] for cache in caches])


def per_step(caches: list[tuple], *tensors: Tensor) -> list[tuple]:
    """Split (N, ·) tensors back into per-step views, one tuple per step of ``caches``."""
    sizes = [cache[0].shape[0] for cache in caches]
    return list(zip(*(t.split(sizes) for t in tensors)))

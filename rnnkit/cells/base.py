"""The contract every cell follows: one time step, forward and hand-derived backward.

A cell is the *math* of one step, with no parameters of its own: the layer owns the
parameters (named as in ``torch.nn``) and hands them to the cell. The engine in
``rnnkit.bptt`` unrolls any cell over time; it relies only on what is declared here.

Symbols used by every cell (shapes for ``n`` active rows at one step):

- ``xw``  (n, G*H) the input projection ``x_t @ weight_ih.T + bias_ih`` (plus ``bias_hh``
  when ``fold_bias_hh``), computed for all time steps at once by the engine;
- ``state`` a tuple of (n, H) tensors — ``(h,)`` or ``(h, c)``; ``state[0]`` is the output;
- ``cache`` what the step keeps for the backward, a NamedTuple (``cache.h_prev``, never
  ``cache[0]``); ``prepare_backward`` turns the caches of all steps into the per-step
  factors ``step_backward`` reads, another NamedTuple (see :func:`per_step`);
- ``dxw`` (n, G*H) the gradient of the loss w.r.t. ``xw``;
- ``dhw`` (n, G*H) the gradient w.r.t. the recurrent pre-activation ``h_prev @ W.T + b_hh``
  (for most cells the same tensor as ``dxw``); ``bias_hh``'s gradient is ``dhw.sum(0)``;
- ``weight_hh`` the recurrent weight, of the shape the cell declares in
  :meth:`Cell.weight_hh_shape`: a (G*H, H) matrix (the default, as in ``torch.nn``), a
  (G*H,) vector for a diagonal recurrence (IndRNN: ``u ⊙ h_{t-1}``), or None for a cell
  whose gates read x_t alone (minGRU, minLSTM); such a cell has no ``bias_hh`` either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

State = tuple[Tensor, ...]


class Cell(ABC):
    """One recurrent step: ``step_forward`` and, directly below it, ``step_backward``.

    Subclasses set the class attributes and implement the two step methods; the default
    ``param_backward`` covers cells whose recurrent product is ``h_prev @ weight_hh.T``.
    """

    name: str = "cell"
    gates: int = 1              # G: weight_ih is (G*H, I), weight_hh (G*H, H) by default
    gate_names: tuple[str, ...] = ("hidden",)   # the G blocks of the weights, in order
    num_states: int = 1         # 1 for (h,), 2 for (h, c)
    fold_bias_hh: bool = True   # bias_hh may be added to the input projection up front
    native_mode: str | None = None  # name of PyTorch's fused kernel, if it computes this cell
    default_init: str = "uniform"   # the layer's init when none is asked for
    state_names: tuple[str, ...] = ("h",)   # one per state, ("h", "c") for an LSTM
    # where "uniform" init draws weight_hh from; None: U(−1/√H, 1/√H) as every parameter
    weight_hh_uniform: tuple[float, float] | None = None
    h_prev_in_product_only: bool = False    # h_{t-1} enters only through h_prev @ W.T (the
                                            # cells where recurrent dropout is exact)
    biases_shift_gates: bool = True         # bias_ih/bias_hh add to the gates as they are
                                            # (False where a normalisation cancels them,
                                            # which makes forget_bias meaningless)
    # extra parameters that start at a constant whatever the init scheme (a layer norm's
    # gains at 1 and shifts at 0): {name: value}
    extra_param_values: dict[str, float] = {}

    # the attributes above: what a wrapper (rnnkit.cells.dropout) copies from the cell it wraps
    DECLARATIONS = ("name", "gates", "gate_names", "num_states", "fold_bias_hh", "default_init",
                    "state_names", "weight_hh_uniform", "h_prev_in_product_only",
                    "biases_shift_gates", "extra_param_values")

    def recurrent_weight_limit(self, length: int) -> float | None:
        """The largest |weight_hh| entry the cell's paper allows for sequences of
        ``length`` steps (a constraint a training loop may apply), or None."""
        return None

    def for_mode(self, training: bool) -> "Cell":
        """The cell for one layer-direction's forward in ``training`` or evaluation mode:
        itself, except for cells with training-time noise (``rnnkit.cells.dropout``)."""
        return self

    def initial_state(self, batch: int, hidden_size: int, *, dtype=None,
                      device=None) -> State:
        """The state before the first step: ``num_states`` zero tensors (batch, H)."""
        return tuple(torch.zeros(batch, hidden_size, dtype=dtype, device=device)
                     for _ in range(self.num_states))

    def weight_hh_shape(self, hidden_size: int) -> tuple[int, ...] | None:
        """The recurrent weight's shape: (G*H, H) (the default), (G*H,) for a diagonal
        recurrence, or None for a cell with no recurrent weight (and so no ``bias_hh``)."""
        return (self.gates * hidden_size, hidden_size)

    def extra_param_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """Parameters beyond torch's four (e.g. peepholes): ``{name: shape}``."""
        return {}

    def param_shapes(self, input_size: int, hidden_size: int,
                     bias: bool = True) -> dict[str, tuple[int, ...]]:
        """Every parameter of one layer-direction, ``{name: shape}`` in ``torch.nn``'s
        order: ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, then the extra ones;
        ``weight_hh`` and ``bias_hh`` only where :meth:`weight_hh_shape` is not None."""
        G, H = self.gates, hidden_size
        recurrent = self.weight_hh_shape(H)
        shapes = {"weight_ih": (G * H, input_size)}
        if recurrent is not None:
            shapes["weight_hh"] = recurrent
        if bias:
            shapes["bias_ih"] = (G * H,)
            if recurrent is not None:
                shapes["bias_hh"] = (G * H,)
        shapes.update(self.extra_param_shapes(H))
        return shapes

    @abstractmethod
    def step_forward(self, xw: Tensor, state: State, weight_hh: Tensor | None,
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
    def step_backward(self, dstate: State, cache: tuple, weight_hh: Tensor | None,
                      *extra: Tensor) -> tuple[State, Tensor, Tensor]:
        """Gradient of one step: d(new state) -> (d(previous state), dxw, dhw), or with a
        fourth element ``kept`` (n, K): per-step gradients the parameters need besides dhw
        (a layer norm's gains see the gradient after the normalisation), which the engine
        stacks in the caches' order and hands to :meth:`param_backward` as ``kept``.

        ``cache`` is that step's entry of :meth:`prepare_backward`'s result.
        """

    def gate_activations(self, cache: tuple) -> dict[str, Tensor]:
        """The sigmoid gates' values at one step, by name, (n, H) each (for diagnostics)."""
        return {}

    def state_activations(self, cache: tuple) -> dict[str, Tensor]:
        """States beyond h after one step, by name, (n, H) each (the LSTM's "cell")."""
        return {}

    def full_state_grad(self, dstate: State, cache: tuple) -> State:
        """dL/d(state at t) in full, from what ``step_backward`` receives (for diagnostics).

        ``dstate[0]`` is already complete; a cell whose other states also feed its own
        output (the LSTM's c through h = o tanh c) adds that path here.
        """
        return dstate

    def param_backward(self, dhw: Tensor, caches: list[tuple], *extra: Tensor,
                       kept: Tensor | None = None) -> tuple[Tensor | None, ...]:
        """Gradients of weight_hh and the extra parameters for a whole sequence at once.

        ``dhw`` is (N, G*H) for all N packed (time, row) pairs; ``caches`` the per-step
        caches in the same order; ``kept`` (N, K) what :meth:`step_backward` kept, if it
        keeps anything. The default needs ``cache.h_prev``: one matrix
        product over the stacked time axis, ``dweight_hh = dhw.T @ h_prev`` (G*H, H).
        A cell with no recurrent weight returns None in its place.
        """
        field = "h_prev" if hasattr(caches[0], "h_prev") else 0   # a plain tuple: h_prev first
        return (dhw.t() @ stacked(caches, field),)         # (G*H, N) @ (N, H)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def stacked(caches: list[tuple], field: str | int) -> Tensor:
    """Field ``field`` (a name of the cache NamedTuple) of every step's cache, stacked along
    the packed time axis: (N, ·). An int index still works for a user cell's plain tuples."""
    if isinstance(field, str):
        return torch.cat([getattr(cache, field) for cache in caches])
    return torch.cat([cache[field] for cache in caches])


def per_step(caches: list[tuple], *tensors: Any) -> list[tuple]:
    """Split (N, ·) tensors back into per-step views, one entry per step of ``caches``.

    ``per_step(caches, Factors, a, b)`` gives ``Factors(a_t, b_t)`` NamedTuples;
    ``per_step(caches, a, b)`` plain tuples. Every cache's first field is (n_t, ·), which
    gives the step sizes.
    """
    factors = None
    if tensors and isinstance(tensors[0], type):
        factors, tensors = tensors[0], tensors[1:]
    sizes = [next(iter(cache)).shape[0] for cache in caches]
    if factors is None:
        return list(zip(*(t.split(sizes) for t in tensors)))
    return [factors(*parts) for parts in zip(*(t.split(sizes) for t in tensors))]


TORCH_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def engine_params(params: Mapping[str, Any]) -> tuple:
    """``(weight_ih, weight_hh, bias_ih, bias_hh, extra)``, the parameter arguments of
    ``rnnkit.bptt`` and ``rnnkit.autograd``, from one layer-direction's parameters named as
    :meth:`Cell.param_shapes` names them; None for each of the four a cell or layer lacks."""
    extra = tuple(p for name, p in params.items() if name not in TORCH_PARAMS)
    return (*(params.get(name) for name in TORCH_PARAMS), extra)

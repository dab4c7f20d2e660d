"""The contract between :mod:`rnnkit.compiled` and one family of cells' compiled loops.

Each family has two files side by side: ``<family>.cpp``, its C++ loops (forward over
time, hand backward over time) with a ``register_<family>`` that ``module.cpp`` calls, and
``<family>.py``, a :class:`Kernel` that says which cells those loops compute and turns the
engine's arguments into the C++ calls. ``rnnkit/compiled/__init__.py`` lists the families'
kernels; everything else (the autograd Function, the input projection, the weight_ih
products, the fallback) is shared.

The arguments are those of :func:`rnnkit.bptt.unroll_forward` / ``unroll_backward`` — the
Python engine, which a kernel must equal to rounding — with the compiled module ``m``
first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

from torch import Tensor

from rnnkit.cells.base import Cell, State


class Grads(NamedTuple):
    """What a kernel's backward returns, for one layer-direction."""

    dxw: Tensor                 # (N, G*H) dL/d(input projection)
    dhw: Tensor                 # (N, G*H) dL/d(recurrent pre-activation): bias_hh's is its sum
    dstate0: State              # (B, H) each: the initial states' gradients
    dweight_hh: Tensor | None   # the recurrent weight's, of its own shape (None: the cell has none)
    dextra: tuple               # the extra parameters', in the cell's order
    dweight_ih: Tensor | None   # (G*H, I) dxw.T x where the layer input x was given, else None


class Kernel(ABC):
    """One family of cells in the compiled loops (see the module docstring)."""

    # backend "auto" takes this loop over PyTorch's fused kernel for the cells it accepts
    # that PyTorch computes too (measured: benchmarks/bench_compiled.py)
    prefers_over_native: bool = False

    @abstractmethod
    def accepts(self, cell: Cell) -> bool:
        """Whether these loops compute ``cell`` exactly (an exact type test: a wrapper copies
        its cell's name but changes the step)."""

    @abstractmethod
    def forward(self, m, cell: Cell, xw: Tensor, batch_sizes: list[int], state0: State,
                weight_hh: Tensor | None, bias_hh: Tensor | None, extra: tuple,
                reverse: bool, keep: bool) -> tuple[Tensor, State, tuple]:
        """out (N, H), the final states (B, H) each, and the caches (a tuple of tensors) that
        :meth:`backward` reads — none with ``keep=False`` (inference). ``xw`` is the input
        projection of :func:`rnnkit.bptt.input_projection`, with bias_hh folded in where the
        cell folds it (``cell.fold_bias_hh``; ``bias_hh`` is then None here)."""

    @abstractmethod
    def backward(self, m, cell: Cell, dout: Tensor, dfinal: State, caches: tuple,
                 batch_sizes: list[int], weight_hh: Tensor | None, extra: tuple,
                 reverse: bool, x: Tensor | None) -> Grads:
        """The hand BPTT of :meth:`forward`: :class:`Grads`."""

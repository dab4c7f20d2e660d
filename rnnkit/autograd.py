"""The BPTT engine as a ``torch.autograd.Function``, and the autograd reference.

``recurrent_bptt`` runs one layer in one direction with the hand-derived backward — through
the compiled loops of :mod:`rnnkit.compiled` where they apply (the LSTM, GRU and Elman cells
on the CPU, once the extension is built), else through ``recurrent_python``, the Python
engine of :mod:`rnnkit.bptt` (the readable reference; ``RNNKIT_COMPILED=0`` forces it);
``recurrent_autograd`` runs *the same forward* (``rnnkit.bptt.unroll_forward``) with autograd
recording every step — the reference the hand backward is tested against, and the
"autograd loop" of the benchmarks. Both take and return packed sequences (see ``bptt``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit import compiled
from rnnkit.bptt import OBSERVERS, input_projection, unroll_backward, unroll_forward
from rnnkit.cells.base import Cell, State


class RecurrentFunction(torch.autograd.Function):
    """One layer, one direction, forward by the engine and backward by hand BPTT."""

    @staticmethod
    def forward(ctx, cell: Cell, batch_sizes: list[int], reverse: bool, x: Tensor,
                weight_ih: Tensor, weight_hh: Tensor | None, bias_ih: Tensor | None,
                bias_hh: Tensor | None, *state0_and_extra: Tensor):
        k = cell.num_states
        state0, extra = state0_and_extra[:k], state0_and_extra[k:]
        xw = input_projection(cell, x, weight_ih, bias_ih, bias_hh)     # (N, G*H)
        out, final, caches = unroll_forward(cell, xw, batch_sizes, state0, weight_hh,
                                            bias_hh, extra, reverse)
        ctx.cell, ctx.batch_sizes, ctx.reverse, ctx.caches = cell, batch_sizes, reverse, caches
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        factory = OBSERVERS.get()
        ctx.observe = None if factory is None else factory(cell, batch_sizes, reverse, caches)
        ctx.save_for_backward(x, weight_ih, weight_hh, *extra)
        # Fresh tensors for the final states: a cache may hold the last step's state, and
        # an output kept on ctx would tie the graph into a reference cycle.
        return (out, *(s.clone() for s in final))

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor, *dfinal: Tensor):
        x, weight_ih, weight_hh, *extra = ctx.saved_tensors
        cell = ctx.cell
        dxw, dhw, dstate0, dweight_hh, dextra = unroll_backward(
            cell, dout, dfinal, ctx.caches, ctx.batch_sizes, weight_hh, tuple(extra), ctx.reverse,
            ctx.observe)
        dx = dxw @ weight_ih if ctx.needs_input_grad[3] else None       # (N, I)
        dweight_ih = dxw.t() @ x                                        # (G*H, I), one product
        dbias_ih = dxw.sum(0) if ctx.has_bias[0] else None
        dbias_hh = dhw.sum(0) if ctx.has_bias[1] else None
        return (None, None, None, dx, dweight_ih, dweight_hh, dbias_ih, dbias_hh,
                *dstate0, *dextra)


def recurrent_bptt(cell: Cell, x: Tensor, batch_sizes: list[int], state0: State,
                   weight_ih: Tensor, weight_hh: Tensor | None, bias_ih: Tensor | None,
                   bias_hh: Tensor | None, extra: tuple[Tensor, ...] = (),
                   reverse: bool = False) -> tuple[Tensor, State]:
    """One recurrent layer over a packed sequence, backward by hand BPTT.

    Args:
        x: (N, I) packed input; batch_sizes: T non-increasing ints summing to N.
        state0: initial states, (B, H) each; the weights as in ``torch.nn`` (G*H, I),
            (G*H, H), (G*H,) — ``weight_hh`` of the cell's ``weight_hh_shape``, so a vector
            or None for some cells (``bias_hh`` then None too); extra: the cell's extra
            parameters (e.g. peepholes).
        reverse: run from each example's last token back to its first.

    Returns:
        out (N, H) and the final states, (B, H) each.

    Under autocast (``--precision bf16|fp16``) the engine runs in float32 all the same — its
    products, its accumulations over time and its gradients — with autocast off inside.
    """
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return recurrent_bptt(cell, x.float(), batch_sizes, tuple(s.float() for s in state0),
                                  weight_ih, weight_hh, bias_ih, bias_hh, extra, reverse)
    if compiled.applies(cell, x, state0, weight_ih, weight_hh, bias_ih, bias_hh, extra):
        return compiled.run(cell, x, batch_sizes, state0, weight_ih, weight_hh, bias_ih,
                            bias_hh, extra, reverse)
    return recurrent_python(cell, x, batch_sizes, state0, weight_ih, weight_hh, bias_ih,
                            bias_hh, extra, reverse)


def recurrent_python(cell: Cell, x: Tensor, batch_sizes: list[int], state0: State,
                     weight_ih: Tensor, weight_hh: Tensor | None, bias_ih: Tensor | None,
                     bias_hh: Tensor | None, extra: tuple[Tensor, ...] = (),
                     reverse: bool = False) -> tuple[Tensor, State]:
    """:func:`recurrent_bptt` through the Python engine (:class:`RecurrentFunction`) always."""
    out, *final = RecurrentFunction.apply(cell, batch_sizes, reverse, x, weight_ih, weight_hh,
                                          bias_ih, bias_hh, *state0, *extra)
    return out, tuple(final)


def recurrent_autograd(cell: Cell, x: Tensor, batch_sizes: list[int], state0: State,
                       weight_ih: Tensor, weight_hh: Tensor | None, bias_ih: Tensor | None,
                       bias_hh: Tensor | None, extra: tuple[Tensor, ...] = (),
                       reverse: bool = False) -> tuple[Tensor, State]:
    """The reference: the engine's own forward, differentiated by autograd. Same arguments
    and results as :func:`recurrent_bptt`."""
    xw = input_projection(cell, x, weight_ih, bias_ih, bias_hh)
    out, final, _ = unroll_forward(cell, xw, batch_sizes, state0, weight_hh, bias_hh,
                                   extra, reverse)
    return out, final

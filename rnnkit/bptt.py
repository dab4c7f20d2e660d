"""Backpropagation through time: unroll any cell forward, then run time in reverse.

Everything here works on *packed* sequences, the layout of ``torch.nn.utils.rnn``'s
``PackedSequence``: the rows of all time steps stacked, ``data`` (N, ·), with
``batch_sizes[t]`` rows at step t, examples sorted by length, longest first. A batch
without lengths is the special case ``batch_sizes = [B] * T`` and costs nothing extra.

Only the first ``batch_sizes[t]`` examples take part in step t; the others keep their state
untouched, which gives the variable-length guarantees for free:

- the final state of each example is its state after its own last token;
- a reverse-direction pass (``reverse=True``) starts each example at its own last token,
  from the initial state;
- padding takes part in no computation, so it changes no output or gradient.

``unroll_forward`` is *the* forward: the hand backward (``unroll_backward``) consumes its
caches, and the autograd reference is the same function run with autograd recording.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

import torch
from torch import Tensor

from rnnkit.cells.base import Cell, State

# Observers see inside the engine (see rnnkit.diagnostics): a factory that each layer call
# of the hand-BPTT Function hands (cell, batch_sizes, reverse, the forward's caches) once
# its forward is done; it may return a function the backward then calls at every step.
Observer = Callable[[int, State], None]
OBSERVERS: ContextVar[Callable[[Cell, list[int], bool, list[tuple]], Observer | None] | None] \
    = ContextVar("rnnkit_bptt_observers", default=None)


PREPARE_BLOCK = 1 << 18   # numbers per block of backward factors (1 MiB in float32)


def offsets_of(batch_sizes: list[int]) -> list[int]:
    """Start row of each time step in the packed layout: [0, b0, b0 + b1, …]."""
    offsets, total = [], 0
    for n in batch_sizes:
        offsets.append(total)
        total += n
    return offsets


def _resize(state: State, n: int, source: State, finished: list[State]) -> State:
    """Bring the active rows of ``state`` to ``n``.

    Rows leaving are set aside in ``finished``; rows joining are taken from ``source``
    (the full-batch initial value of whatever is being carried).
    """
    cur = state[0].shape[0]
    if n < cur:
        finished.append(tuple(s[n:] for s in state))
        return tuple(s[:n] for s in state)
    if n > cur:
        return tuple(torch.cat([s, src[cur:n]]) for s, src in zip(state, source))
    return state


def _join(state: State, finished: list[State]) -> State:
    """The full-batch value: active rows first, then the set-aside ones in row order."""
    if not finished:
        return state
    return tuple(torch.cat([s, *(f[k] for f in reversed(finished))])
                 for k, s in enumerate(state))


def _time_order(T: int, backwards: bool) -> range:
    return range(T - 1, -1, -1) if backwards else range(T)


def projection_bias(cell: Cell, bias_ih: Tensor | None,
                    bias_hh: Tensor | None) -> Tensor | None:
    """The input projection's bias (G*H,): bias_ih, plus bias_hh where the cell folds it
    (``cell.fold_bias_hh``); None where there is neither."""
    if cell.fold_bias_hh and bias_hh is not None:
        return bias_hh if bias_ih is None else bias_ih + bias_hh
    return bias_ih


def input_projection(cell: Cell, x: Tensor, weight_ih: Tensor, bias_ih: Tensor | None,
                     bias_hh: Tensor | None) -> Tensor:
    """All time steps' input projection in one matrix product: (N, I) -> (N, G*H)."""
    bias = projection_bias(cell, bias_ih, bias_hh)
    if bias is None:
        return x @ weight_ih.t()
    return torch.addmm(bias, x, weight_ih.t())


def unroll_forward(cell: Cell, xw: Tensor, batch_sizes: list[int], state0: State,
                   weight_hh: Tensor | None, bias_hh: Tensor | None,
                   extra: tuple[Tensor, ...] = (),
                   reverse: bool = False) -> tuple[Tensor, State, list[tuple]]:
    """Run ``cell`` over a packed sequence.

    Args:
        xw: (N, G*H) input projection from :func:`input_projection`.
        batch_sizes: T non-increasing ints summing to N.
        state0: initial states, each (B, H) with B = batch_sizes[0].
        weight_hh: the recurrent weight as the cell declares it (``cell.weight_hh_shape``:
            (G*H, H), (G*H,) or None); bias_hh: (G*H,) or None; extra: the cell's extra
            parameters.
        reverse: walk time from the end (each example from its own last token).

    Returns:
        out (N, H) the hidden state of every packed row, the final states (B, H) each, and
        the per-step caches indexed by time step.
    """
    T = len(batch_sizes)
    offsets = offsets_of(batch_sizes)
    order = _time_order(T, reverse)
    bias = None if cell.fold_bias_hh else bias_hh
    # Same values, column-major storage: the step product h_prev @ weight_hh.T becomes a
    # plain (not transposed) GEMM on a contiguous (H, G*H) matrix — about 25% faster.
    if weight_hh is not None and weight_hh.dim() == 2:
        weight_hh = weight_hh.t().contiguous().t()
    state = tuple(s[:batch_sizes[order[0]]] for s in state0)
    finished: list[State] = []
    outs: list[Tensor] = [None] * T
    caches: list[tuple] = [None] * T
    for t in order:
        n, start = batch_sizes[t], offsets[t]
        state = _resize(state, n, state0, finished)
        state, caches[t] = cell.step_forward(xw[start:start + n], state, weight_hh, bias, *extra)
        outs[t] = state[0]
    return torch.cat(outs), _join(state, finished), caches


def unroll_backward(cell: Cell, dout: Tensor, dfinal: State, caches: list[tuple],
                    batch_sizes: list[int], weight_hh: Tensor | None,
                    extra: tuple[Tensor, ...] = (), reverse: bool = False,
                    observe: Observer | None = None):
    """Hand BPTT: walk the forward's time steps in the opposite order.

    Args:
        dout: (N, H) gradient of the loss w.r.t. ``out`` of :func:`unroll_forward`.
        dfinal: gradients w.r.t. the final states, (B, H) each.
        caches, batch_sizes, weight_hh, extra, reverse: as given to / returned by the forward.
        observe: called as ``observe(t, dstate)`` at every step with the full gradient of
            the loss w.r.t. the state at step t — ``(dL/dh_t,)`` or ``(dL/dh_t, dL/dc_t)``,
            (n_t, H) each, through the output and all later steps.

    Returns:
        ``(dxw, dhw, dstate0, dweight_hh, dextra)``: dxw and dhw (N, G*H) — the gradients of
        the input projection and of the recurrent pre-activation — the initial states'
        gradients, and the parameter gradients, each weight gradient one matrix product over
        the stacked time axis (``dweight_hh`` None for a cell without a recurrent weight).
    """
    T = len(batch_sizes)
    offsets = offsets_of(batch_sizes)
    order = _time_order(T, not reverse)
    # The cell's per-step factors are prepared a block of steps at a time: vectorised over
    # the block, yet small enough (about PREPARE_BLOCK numbers) to stay in cache. A step's
    # factors are about the size of its input projection, (n, G*H), whatever the shape of
    # the recurrent weight.
    block = max(1, PREPARE_BLOCK // (batch_sizes[0] * dout.shape[1] * cell.gates))
    dstate = tuple(d[:batch_sizes[order[0]]] for d in dfinal)
    finished: list[State] = []
    dxws: list[Tensor] = [None] * T
    dhws: list[Tensor] = [None] * T
    kept: list[Tensor] = [None] * T                         # what the cell keeps, if anything
    for k, t in enumerate(order):
        if k % block == 0:
            ts = order[k:k + block]
            steps = dict(zip(ts, cell.prepare_backward([caches[u] for u in ts], *extra)))
        n, start = batch_sizes[t], offsets[t]
        dstate = _resize(dstate, n, dfinal, finished)
        dh = dstate[0] + dout[start:start + n]              # output and next step both use h_t
        if observe is not None:
            observe(t, cell.full_state_grad((dh, *dstate[1:]), steps[t]))
        dstate, dxws[t], dhws[t], *rest = cell.step_backward((dh, *dstate[1:]), steps[t],
                                                             weight_hh, *extra)
        if rest:
            kept[t] = rest[0]
    dxw = torch.cat(dxws)                                   # (N, G*H)
    dhw = dxw if all(a is b for a, b in zip(dxws, dhws)) else torch.cat(dhws)
    extra_grads = {} if kept[0] is None else {"kept": torch.cat(kept)}
    dweight_hh, *dextra = cell.param_backward(dhw, caches, *extra, **extra_grads)
    return dxw, dhw, _join(dstate, finished), dweight_hh, tuple(dextra)

"""Parallel-scan training for cells whose new state is linear in the old one (minGRU, minLSTM;
Feng et al. 2024, "Were RNNs All We Needed?").

Such a cell declares ``scan_coefficients(xw) -> (a, b)``: ``h_t = a_t ⊙ h_{t-1} + b_t``, with
``a`` and ``b`` computed from the input projection alone, all steps at once. Then no loop
over time is needed: with ``A_t = a_1 ⋯ a_t``,

    h_t = A_t ⊙ (h_0 + Σ_{s≤t} b_s / A_s)

computed in log space (Heinsen 2023): ``log A`` is a cumulative sum of ``log a``, and the
sum over s a cumulative log-sum-exp of ``log |b_s| − log A_s`` — the positive and the
negative ``b_s`` apart, since ``h̃`` takes either sign. The scan runs in chunks of
``chunk`` steps (the state carried from one to the next), which bounds the range of
``log A`` inside a chunk and so the float32 rounding of the log-space terms; each chunk is a
handful of whole-tensor operations, of depth independent of its length: the method for a
GPU ("log").

On a CPU the parallel form buys nothing: its depth is free, its work is not, and the log
and exp of every element cost far more than the recurrence itself. There the same
recurrence runs as one fused multiply-add per step over (B, H) ("sequential"), which is
work-optimal — and every other part (the gates of all steps at once, the backward's
coefficients, the weight gradients) stays one whole-tensor operation. ``method=None``
picks "log" on CUDA and "sequential" elsewhere; both are exact to float rounding
(``benchmarks/bench_core.py --scan-only`` times them against the step form).

The backward, derived by hand, is the same recurrence run in reverse time (a reverse
scan): the gradient reaching ``h_t`` is

    δ_t = g_t + a_{t+1} ⊙ δ_{t+1},     δ_T = g_T + dL/dh_T(final)

(g: the output's gradient), then ``da_t = δ_t ⊙ h_{t-1}``, ``db_t = δ_t``,
``dh_0 = a_1 ⊙ δ_1``, and the cell's ``scan_coefficients_backward`` turns (da, db) into the
gradient of the input projection; the weight gradients are one matrix product each, as in
the step engine (:mod:`rnnkit.autograd`).

Sequences of several lengths are laid out on a (T, B) grid, each from its own first token
(``reverse``: from its own last token back to its first); a grid cell past the end of its
sequence holds ``a = 1, b = 0``, which carries the state unchanged, so that the state at the
end of the grid is each sequence's own final state. ``recurrent_scan`` takes and returns
packed sequences like the other engines (``backend="scan"`` of the layers).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.bptt import input_projection
from rnnkit.cells.base import Cell

CHUNK = 128       # steps of one log-space scan: bounds the range of log A in float32
METHODS = ("sequential", "log")


def linear_scan(a: Tensor, b: Tensor, h0: Tensor, method: str | None = None,
                chunk: int = CHUNK) -> Tensor:
    """Every ``h_t = a_t ⊙ h_{t-1} + b_t`` from ``h0``: a, b (T, B, H) with a in [0, 1],
    h0 (B, H) -> h (T, B, H); ``method`` "log" (in log space, ``chunk`` steps at a time) or
    "sequential" (None: "log" on CUDA, else "sequential")."""
    method = method or ("log" if a.is_cuda else "sequential")
    if method == "sequential":
        out, h = torch.empty_like(b), h0
        for t in range(a.shape[0]):
            h = torch.addcmul(b[t], a[t], h, out=out[t])                  # a_t h + b_t
        return out
    if method != "log":
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    tiny = torch.finfo(a.dtype).tiny
    out, h = [], h0
    for start in range(0, a.shape[0], chunk):
        a_c, b_c = a[start:start + chunk], b[start:start + chunk]          # (C, B, H)
        log_A = torch.cumsum(torch.log(a_c.clamp_min(tiny)), 0)            # log a_1 ⋯ a_t
        w = torch.log(b_c.abs()) - log_A                                   # log |b_s / A_s|
        none = torch.full_like(w, -torch.inf)
        pos = torch.logcumsumexp(torch.where(b_c > 0, w, none), 0)         # log Σ b_s/A_s > 0
        neg = torch.logcumsumexp(torch.where(b_c < 0, w, none), 0)         # log Σ |…| < 0
        h_c = torch.exp(log_A) * h + torch.exp(log_A + pos) - torch.exp(log_A + neg)
        out.append(h_c)
        h = h_c[-1]
    return torch.cat(out)


def reverse_scan(a: Tensor, g: Tensor, d_last: Tensor, method: str | None = None) -> Tensor:
    """The backward's recurrence, in reverse time: ``δ_t = g_t + a_{t+1} ⊙ δ_{t+1}`` with
    ``δ_{T-1} = g_{T-1} + d_last``; a, g (T, B, H), d_last (B, H) -> δ (T, B, H)."""
    method = method or ("log" if a.is_cuda else "sequential")
    if method != "sequential":        # the forward scan over flipped time, a shifted by one
        a_next = torch.cat([a.new_ones(1, *a.shape[1:]), a.flip(0)[:-1]])
        return linear_scan(a_next, g.flip(0), d_last, method).flip(0)
    out, d = torch.empty_like(g), d_last
    d = torch.add(g[-1], d, out=out[-1])
    for t in range(a.shape[0] - 2, -1, -1):
        d = torch.addcmul(g[t], a[t + 1], d, out=out[t])               # g_t + a_{t+1} δ_{t+1}
    return out


def _grid(batch_sizes: list[int], reverse: bool, device) -> tuple[Tensor | None, int, int]:
    """(position on the flattened (T, B) grid of every packed row (N,), T, B): row (t, b)
    goes to (t, b), or with ``reverse`` to (L_b − 1 − t, b). None when every sequence has
    all T steps and runs forward: the packed rows are the grid already."""
    T, B = len(batch_sizes), batch_sizes[0]
    if not reverse and batch_sizes[-1] == B:
        return None, T, B
    sizes = torch.tensor(batch_sizes, device=device)                          # (T,)
    t = torch.repeat_interleave(torch.arange(T, device=device), sizes)       # (N,)
    starts = torch.cumsum(sizes, 0) - sizes                                  # (T,)
    b = torch.arange(len(t), device=device) - starts[t]                      # (N,)
    if reverse:
        lengths = (sizes[:, None] > torch.arange(B, device=device)).sum(0)  # (B,)
        t = lengths[b] - 1 - t
    return t * B + b, T, B


def _to_grid(rows: Tensor, where: Tensor | None, T: int, B: int, fill: float) -> Tensor:
    """Packed rows (N, H) on the (T, B, H) grid, ``fill`` where no sequence is."""
    if where is None:
        return rows.view(T, B, -1)
    return rows.new_full((T * B, rows.shape[1]), fill).index_copy_(0, where, rows).view(T, B, -1)


def _from_grid(grid: Tensor, where: Tensor | None) -> Tensor:
    """The grid's (T, B, H) cells of the packed rows, (N, H)."""
    flat = grid.view(-1, grid.shape[-1])
    return flat if where is None else flat.index_select(0, where)


class ScanFunction(torch.autograd.Function):
    """One layer, one direction, forward and backward by the scan."""

    @staticmethod
    def forward(ctx, cell: Cell, batch_sizes: list[int], reverse: bool, method: str | None,
                x: Tensor, weight_ih: Tensor, bias_ih: Tensor | None, h0: Tensor):
        xw = input_projection(cell, x, weight_ih, bias_ih, None)               # (N, G*H)
        a_rows, b_rows = cell.scan_coefficients(xw)                            # (N, H) each
        where, T, B = _grid(batch_sizes, reverse, x.device)
        a, b = _to_grid(a_rows, where, T, B, 1.0), _to_grid(b_rows, where, T, B, 0.0)
        h = linear_scan(a, b, h0, method)                                      # (T, B, H)
        ctx.cell, ctx.method, ctx.has_bias = cell, method, bias_ih is not None
        ctx.where = where
        ctx.save_for_backward(x, weight_ih, xw, a, h, h0)
        out = _from_grid(h, where)
        return (out.clone() if where is None else out), h[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor, dfinal: Tensor):
        x, weight_ih, xw, a, h, h0 = ctx.saved_tensors
        where, (T, B, H) = ctx.where, a.shape
        g = _to_grid(dout.contiguous(), where, T, B, 0.0)
        delta = reverse_scan(a, g, dfinal, ctx.method)          # δ_t = g_t + a_{t+1} δ_{t+1}
        da_grid = torch.empty_like(delta)                                      # δ_t ⊙ h_{t-1}
        torch.mul(delta[0], h0, out=da_grid[0])
        torch.mul(delta[1:], h[:-1], out=da_grid[1:])
        da, db = _from_grid(da_grid, where), _from_grid(delta, where)          # (N, H)
        dh0 = a[0] * delta[0]                                                  # (B, H)
        dxw = ctx.cell.scan_coefficients_backward(xw, da, db)                  # (N, G*H)
        dx = dxw @ weight_ih if ctx.needs_input_grad[4] else None              # (N, I)
        dweight_ih = dxw.t() @ x                                               # (G*H, I)
        dbias_ih = dxw.sum(0) if ctx.has_bias else None
        return None, None, None, None, dx, dweight_ih, dbias_ih, dh0


def recurrent_scan(cell: Cell, x: Tensor, batch_sizes: list[int], state0: tuple[Tensor, ...],
                   weight_ih: Tensor, weight_hh: Tensor | None, bias_ih: Tensor | None,
                   bias_hh: Tensor | None, extra: tuple[Tensor, ...] = (),
                   reverse: bool = False, method: str | None = None) -> tuple[Tensor, tuple]:
    """One recurrent layer over a packed sequence by the parallel scan — the arguments and
    results of :func:`rnnkit.autograd.recurrent_bptt`, for a cell with
    ``scan_coefficients`` (no ``weight_hh``, one state).

    Args:
        x: (N, I) packed input; batch_sizes: T non-increasing ints summing to N;
        state0: ``(h0,)``, (B, H); weight_ih (G*H, I), bias_ih (G*H,) or None;
        method: of :func:`linear_scan`.

    Returns:
        out (N, H) and the final state ``(h_T,)``, (B, H).
    """
    if not supports(cell):
        raise ValueError(f"backend scan: the cell {cell!r} is not linear in its state (it "
                         f"has no scan_coefficients); scan trains min_gru and min_lstm")
    if torch.is_autocast_enabled(x.device.type):           # the scan stays float32
        with torch.autocast(x.device.type, enabled=False):
            return recurrent_scan(cell, x.float(), batch_sizes,
                                  tuple(s.float() for s in state0), weight_ih, weight_hh,
                                  bias_ih, bias_hh, extra, reverse, method)
    out, final = ScanFunction.apply(cell, batch_sizes, reverse, method, x, weight_ih, bias_ih,
                                    state0[0])
    return out, (final,)


def supports(cell: Cell) -> bool:
    """Whether ``cell`` can be trained by the scan (its state is linear in the old one)."""
    return hasattr(cell, "scan_coefficients") and hasattr(cell, "scan_coefficients_backward")

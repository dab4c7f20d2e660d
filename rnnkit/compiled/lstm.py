"""The LSTM's compiled loops (``lstm.cpp``): :class:`rnnkit.cells.lstm.LSTMCell`, with or
without peepholes, and :class:`rnnkit.cells.dropout.Zoneout` around one."""

from __future__ import annotations

import torch

from rnnkit.cells.dropout import Zoneout
from rnnkit.cells.lstm import LSTMCell
from rnnkit.compiled.kernel import Grads, Kernel


def zoneout_masks(p: float, xw: torch.Tensor, batch_sizes: list[int], H: int,
                  reverse: bool) -> torch.Tensor:
    """The keep masks d_t of a training forward, packed (2, N, H) = [d_h, d_c], drawn as
    :class:`~rnnkit.cells.dropout.Zoneout` draws them in the Python engine — same generator,
    same order (the walk's steps; at each, one Bernoulli(p) draw of (n_t, H) per state, h
    then c), so the same masks from the same seed."""
    N = xw.shape[0]
    masks = xw.new_empty((2, N, H))
    probs = xw.new_full((batch_sizes[0], H), p)     # full_like(new_state, p), its first n rows
    T = len(batch_sizes)
    offsets = [0] * T
    for t in range(1, T):
        offsets[t] = offsets[t - 1] + batch_sizes[t - 1]
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        n, start = batch_sizes[t], offsets[t]
        for s in range(2):
            torch.bernoulli(probs[:n], out=masks[s, start:start + n])
    return masks


class LSTMKernel(Kernel):
    """The LSTM, with or without peepholes, and zoneout around it. Zoneout in training reads
    masks drawn here, before the loop, exactly as the Python engine draws them; in
    evaluation the scalar p (nothing drawn). Not preferred over oneDNN's fused LSTM for the
    plain cell: about as fast (0.9-1.2x, ``benchmarks/bench_core.py``)."""

    def accepts(self, cell):
        if type(cell) is Zoneout:
            return type(cell.inner) is LSTMCell
        return type(cell) is LSTMCell

    @staticmethod
    def _parts(cell):
        """(the LSTMCell, zoneout's p or None, whether masks are drawn)."""
        if type(cell) is Zoneout:
            return cell.inner, cell.p, cell.training
        return cell, None, False

    def forward(self, m, cell, xw, batch_sizes, state0, weight_hh, bias_hh, extra, reverse,
                keep):
        lstm, p, training = self._parts(cell)
        peephole = extra[0] if lstm.peephole else None
        masks = (zoneout_masks(p, xw, batch_sizes, state0[0].shape[1], reverse)
                 if training else None)
        out, h, c, *caches = m.lstm_forward(xw, batch_sizes, state0[0], state0[1], weight_hh,
                                             peephole, masks, None if training else p,
                                             reverse, keep)
        if not keep:
            return out, (h, c), ()
        return out, (h, c), (*caches, masks) if training else tuple(caches)

    def backward(self, m, cell, dout, dfinal, caches, batch_sizes, weight_hh, extra, reverse,
                 x):
        lstm, p, training = self._parts(cell)
        peephole = extra[0] if lstm.peephole else None
        masks = caches[4] if training else None
        da, dh0, dc0, dweight_hh, dweight_ih, dpeephole = m.lstm_backward(
            dout, dfinal[0], dfinal[1], *caches[:4], batch_sizes, weight_hh, peephole, masks,
            None if training else p, reverse, x)
        return Grads(da, da, (dh0, dc0), dweight_hh, (dpeephole,) if lstm.peephole else (),
                     dweight_ih if x is not None else None)


KERNELS = [LSTMKernel()]

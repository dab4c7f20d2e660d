"""The LSTM's compiled loops (``lstm.cpp``): :class:`rnnkit.cells.lstm.LSTMCell`."""

from __future__ import annotations

from rnnkit.cells.lstm import LSTMCell
from rnnkit.compiled.kernel import Grads, Kernel


class LSTMKernel(Kernel):
    """The LSTM without peepholes (oneDNN's fused LSTM stays faster, so not preferred)."""

    def accepts(self, cell):
        return type(cell) is LSTMCell and not cell.peephole

    def forward(self, m, cell, xw, batch_sizes, state0, weight_hh, bias_hh, extra, reverse,
                keep):
        out, h, c, *caches = m.lstm_forward(xw, batch_sizes, state0[0], state0[1], weight_hh,
                                            reverse, keep)
        return out, (h, c), tuple(caches) if keep else ()

    def backward(self, m, cell, dout, dfinal, caches, batch_sizes, weight_hh, extra, reverse,
                 x):
        da, dh0, dc0, dweight_hh, dweight_ih = m.lstm_backward(
            dout, dfinal[0], dfinal[1], *caches, batch_sizes, weight_hh, reverse, x)
        return Grads(da, da, (dh0, dc0), dweight_hh, (), dweight_ih if x is not None else None)


KERNELS = [LSTMKernel()]

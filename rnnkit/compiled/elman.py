"""The Elman RNN's compiled loops (``elman.cpp``): :class:`rnnkit.cells.elman.ElmanCell`
with tanh, ReLU (the IRNN too) or sigmoid."""

from __future__ import annotations

from rnnkit.cells.elman import ElmanCell
from rnnkit.compiled.kernel import Grads, Kernel

NONLINEARITY = {"tanh": 0, "relu": 1, "sigmoid": 2}     # elman.cpp's codes


class ElmanKernel(Kernel):
    """h_t = f(xw + h_{t-1} W.T)."""

    prefers_over_native = True          # about 2x PyTorch's CPU RNN (bench_compiled.py)

    def accepts(self, cell):
        return type(cell) is ElmanCell

    def forward(self, m, cell, xw, batch_sizes, state0, weight_hh, bias_hh, extra, reverse,
                keep):
        out, h, h_prev = m.elman_forward(xw, batch_sizes, state0[0], weight_hh,
                                         NONLINEARITY[cell.nonlinearity], reverse, keep)
        # the backward reads the outputs: keep its own copy, so that a caller may change
        # the returned ones in place
        return out, (h,), (out.clone(), h_prev) if keep else ()

    def backward(self, m, cell, dout, dfinal, caches, batch_sizes, weight_hh, extra, reverse,
                 x):
        da, dh0, dweight_hh, dweight_ih = m.elman_backward(
            dout, dfinal[0], *caches, batch_sizes, weight_hh, NONLINEARITY[cell.nonlinearity],
            reverse, x)
        return Grads(da, da, (dh0,), dweight_hh, (), dweight_ih if x is not None else None)


KERNELS = [ElmanKernel()]

"""The compiled loops of the cells without a recurrent matrix (``diagonal.cpp``):
:class:`rnnkit.cells.indrnn.IndRNNCell` (a (H,) recurrent weight),
:class:`rnnkit.cells.min_gru.MinGRUCell` and :class:`rnnkit.cells.min_lstm.MinLSTMCell` (none).

No matrix product in their loops: each step is one element pass, the threads split the
columns once per sequence. Caches: a copy of the outputs and h0, plus the input projection
xw for minGRU / minLSTM (the tensor itself, nothing copied: the backward recomputes the
gates from it).
"""

from __future__ import annotations

from rnnkit.cells.indrnn import IndRNNCell
from rnnkit.cells.min_gru import MinGRUCell
from rnnkit.cells.min_lstm import MinLSTMCell
from rnnkit.compiled.kernel import Grads, Kernel

CODES = {IndRNNCell: 0, MinGRUCell: 1, MinLSTMCell: 2}      # diagonal.cpp's cell codes


class DiagonalKernel(Kernel):
    """IndRNN ``h = relu(xw + u ⊙ h_prev)``; minGRU and minLSTM, gates from xw alone."""

    def accepts(self, cell):
        return type(cell) in CODES

    def forward(self, m, cell, xw, batch_sizes, state0, weight_hh, bias_hh, extra, reverse,
                keep):
        code = CODES[type(cell)]
        out, h, hs, h0 = m.diagonal_forward(xw, batch_sizes, state0[0], weight_hh, code,
                                            reverse, keep)
        if not keep:
            return out, (h,), ()
        return out, (h,), (hs, h0) if code == 0 else (hs, h0, xw)

    def backward(self, m, cell, dout, dfinal, caches, batch_sizes, weight_hh, extra, reverse,
                 x):
        code = CODES[type(cell)]
        hs, h0, *rest = caches
        xw = rest[0] if rest else None
        dxw, dh0, dweight_hh, dweight_ih = m.diagonal_backward(
            dout, dfinal[0], hs, h0, xw, batch_sizes, weight_hh, code, reverse, x)
        return Grads(dxw, dxw, (dh0,), dweight_hh, (), dweight_ih if x is not None else None)


KERNELS = [DiagonalKernel()]

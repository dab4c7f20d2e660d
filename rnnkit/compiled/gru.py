"""The GRU's compiled loops (``gru.cpp``): :class:`rnnkit.cells.gru.GRUCell` (reset after)
and :class:`rnnkit.cells.gru.GRUResetBeforeCell` (reset before, Cho et al.)."""

from __future__ import annotations

from rnnkit.cells.gru import GRUCell, GRUResetBeforeCell
from rnnkit.compiled.kernel import Grads, Kernel


class GRUKernel(Kernel):
    """The GRU with the reset gate after the recurrent product (``torch.nn.GRU``'s)."""

    prefers_over_native = True          # about 2x PyTorch's CPU GRU (bench_compiled.py)

    def accepts(self, cell):
        return type(cell) is GRUCell

    def forward(self, m, cell, xw, batch_sizes, state0, weight_hh, bias_hh, extra, reverse,
                keep):
        out, h, *caches = m.gru_forward(xw, batch_sizes, state0[0], weight_hh, bias_hh,
                                        reverse, keep)
        return out, (h,), tuple(caches) if keep else ()

    def backward(self, m, cell, dout, dfinal, caches, batch_sizes, weight_hh, extra, reverse,
                 x):
        dxw, dhw, dh0, dweight_hh, dweight_ih = m.gru_backward(
            dout, dfinal[0], *caches, batch_sizes, weight_hh, reverse, x)
        return Grads(dxw, dhw, (dh0,), dweight_hh, (), dweight_ih if x is not None else None)


class GRUResetBeforeKernel(Kernel):
    """The GRU with the reset gate applied to h_{t-1} before the recurrent product: two
    products a step each way, on the row blocks [W_r; W_z] and W_n of ``weight_hh``
    (bias_hh folded into the input projection, so ``bias_hh`` is None here). PyTorch has
    no kernel for it, so nothing to prefer it over."""

    def accepts(self, cell):
        return type(cell) is GRUResetBeforeCell

    def forward(self, m, cell, xw, batch_sizes, state0, weight_hh, bias_hh, extra, reverse,
                keep):
        out, h, *caches = m.gru_reset_before_forward(xw, batch_sizes, state0[0], weight_hh,
                                                     reverse, keep)
        return out, (h,), tuple(caches) if keep else ()

    def backward(self, m, cell, dout, dfinal, caches, batch_sizes, weight_hh, extra, reverse,
                 x):
        da, dh0, dweight_hh, dweight_ih = m.gru_reset_before_backward(
            dout, dfinal[0], *caches, batch_sizes, weight_hh, reverse, x)
        return Grads(da, da, (dh0,), dweight_hh, (), dweight_ih if x is not None else None)


KERNELS = [GRUKernel(), GRUResetBeforeKernel()]

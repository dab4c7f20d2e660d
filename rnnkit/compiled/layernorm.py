"""The layer-normalised cells' compiled loops (``layernorm.cpp``):
:class:`rnnkit.cells.layernorm_lstm.LayerNormLSTMCell` and
:class:`rnnkit.cells.layernorm_gru.LayerNormGRUCell`."""

from __future__ import annotations

from rnnkit.cells.layernorm_gru import LayerNormGRUCell
from rnnkit.cells.layernorm_lstm import LayerNormLSTMCell
from rnnkit.compiled.kernel import Grads, Kernel


class LayerNormLSTMKernel(Kernel):
    """The layer-normalised LSTM (no PyTorch kernel computes it)."""

    def accepts(self, cell):
        return type(cell) is LayerNormLSTMCell

    def forward(self, m, cell, xw, batch_sizes, state0, weight_hh, bias_hh, extra, reverse,
                keep):
        out, h, c, *caches = m.layernorm_lstm_forward(xw, batch_sizes, state0[0], state0[1],
                                                      weight_hh, bias_hh, *extra, reverse,
                                                      keep)
        return out, (h, c), tuple(caches) if keep else ()

    def backward(self, m, cell, dout, dfinal, caches, batch_sizes, weight_hh, extra, reverse,
                 x):
        (dxw, dhw, dh0, dc0, dweight_hh, dweight_ih, dscale_ih, dshift, dscale_hh, dscale_c,
         dshift_c) = m.layernorm_lstm_backward(dout, dfinal[0], dfinal[1], *caches,
                                               batch_sizes, weight_hh, *extra, reverse, x)
        # dL/dβ_x = dL/dβ_h = Σ da: equal values, two tensors (two .grad must not alias)
        dextra = (dscale_ih, dshift, dscale_hh, dshift.clone(), dscale_c, dshift_c)
        return Grads(dxw, dhw, (dh0, dc0), dweight_hh, dextra,
                     dweight_ih if x is not None else None)


class LayerNormGRUKernel(Kernel):
    """The layer-normalised GRU, reset gate after the recurrent product."""

    def accepts(self, cell):
        return type(cell) is LayerNormGRUCell

    def forward(self, m, cell, xw, batch_sizes, state0, weight_hh, bias_hh, extra, reverse,
                keep):
        out, h, *caches = m.layernorm_gru_forward(xw, batch_sizes, state0[0], weight_hh,
                                                  bias_hh, *extra, reverse, keep)
        return out, (h,), tuple(caches) if keep else ()

    def backward(self, m, cell, dout, dfinal, caches, batch_sizes, weight_hh, extra, reverse,
                 x):
        (dxw, dhw, dh0, dweight_hh, dweight_ih, dscale_ih, dshift_ih, dscale_hh,
         dshift_hh) = m.layernorm_gru_backward(dout, dfinal[0], *caches, batch_sizes,
                                               weight_hh, *extra, reverse, x)
        return Grads(dxw, dhw, (dh0,), dweight_hh,
                     (dscale_ih, dshift_ih, dscale_hh, dshift_hh),
                     dweight_ih if x is not None else None)


KERNELS = [LayerNormLSTMKernel(), LayerNormGRUKernel()]

"""Int8 inference: PyTorch's dynamic quantisation of a language model's matrix products.

:func:`quantize_lm` returns a copy of a trained :class:`~rnnkit.models.lm.LanguageModel`
whose weights are int8 and whose activations are quantised on the fly at each product
(``torch.ao.quantization.quantize_dynamic``, fbgemm/x86 kernels): no calibration data, the
same inputs and outputs, for ``generate``, ``score`` and ``eval`` with ``--int8``.

What becomes int8:

- the output layer (the full softmax's ``V x H`` product, the largest matrix of a word
  model; a tied weight is copied, the embedding stays float), and every ``nn.Linear`` of the
  adaptive head (the class-factorised head gathers rows of its weight per class: float);
- the recurrent layers of cells that have a ``torch.nn`` twin with a quantised kernel
  (``lstm``, ``gru``; see :func:`rnnkit.cells.torch_twin`): PyTorch's dynamic int8 LSTM/GRU
  runs them, input and recurrent products both.

Other cells (peephole, layer-normalised, IndRNN, minimal, Elman RNN …) keep float recurrent
layers — PyTorch has no quantised kernel for them — and :func:`quantize_lm` says so in its
description. The embedding lookup stays float (it is a gather, not a product).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.cells import torch_twin
from rnnkit.models.direct import WORDS, DirectFeatures
from rnnkit.models.softmax import FullSoftmax, LogitsHead, plus_direct

_QUANTISED_TWINS = (nn.LSTM, nn.GRU)        # the recurrent modules quantize_dynamic handles


def _quantize_dynamic(module: nn.Module, types: set) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` to int8, its deprecation notices hushed
    (torch 2.13 points to torchao, whose int8 path covers ``nn.Linear`` only)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # it swaps children, not the root:
        return quantize_dynamic(nn.Sequential(module), types, dtype=torch.qint8)[0]


class Int8Recurrent(nn.Module):
    """A one-direction :class:`~rnnkit.layers.RecurrentStack` of an LSTM or GRU cell, run
    by PyTorch's dynamic int8 ``LSTM``/``GRU`` with the same weights.

    Same calls as the stack it replaces: ``forward(x (T, B, I), state, lengths=None)`` ->
    output (T, B, H), state; ``step(x (B, I), state)`` -> output (B, H), state;
    ``initial_state(B)``. States as the stack's: ``(h, c)`` of (L, B, H) for the LSTM, h
    (L, B, H) for the GRU.
    """

    def __init__(self, stack):
        super().__init__()
        twin_cls, kwargs = torch_twin(stack.cell)
        twin = twin_cls(stack.input_size, stack.hidden_size, num_layers=stack.num_layers,
                        **kwargs)
        twin.load_state_dict(stack.state_dict(), strict=True)
        self.lstm = twin_cls is nn.LSTM
        self.num_layers, self.hidden_size = stack.num_layers, stack.hidden_size
        self.twin = _quantize_dynamic(twin, {twin_cls})

    def initial_state(self, batch_size: int):
        """Zeros, as the float stack's: ``(h, c)`` (L, B, H) each for the LSTM, h for the GRU."""
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size)
        return (zeros, zeros.clone()) if self.lstm else zeros

    def _hx(self, state, batch: int):
        if state is None:
            state = self.initial_state(batch)
        if self.lstm:
            return tuple(state)
        return state[0] if isinstance(state, tuple) else state

    def forward(self, x: Tensor, state=None, lengths: Tensor | None = None):
        hx = self._hx(state, x.shape[1])
        if lengths is None:
            return self.twin(x, hx)
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        out, new = self.twin(packed, hx)
        return pad_packed_sequence(out, total_length=x.shape[0])[0], new

    def step(self, x: Tensor, state=None):
        out, new = self.forward(x[None], state)
        return out[0], new


class Int8FullSoftmax(LogitsHead):
    """A :class:`~rnnkit.models.softmax.FullSoftmax` whose ``h @ weight.T + bias`` is an
    int8 Linear (a tied weight is copied; the embedding keeps the float one)."""

    def __init__(self, head):
        super().__init__()
        linear = nn.Linear(head.weight.shape[1], head.weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(head.weight)
            linear.bias.copy_(head.bias)
        self.linear = _quantize_dynamic(linear, {nn.Linear})

    def logits(self, hidden: Tensor, direct: DirectFeatures | None = None) -> Tensor:
        """(N, H) -> (N, V), the direct connections' scores (if any) added in float."""
        logits = self.linear(hidden)
        return plus_direct(logits, direct, WORDS, torch.arange(logits.shape[1]))


def _int8_head(head: nn.Module) -> tuple[nn.Module, bool]:
    """The head with its products int8 — a full softmax as :class:`Int8FullSoftmax`, the
    adaptive head's ``nn.Linear`` modules quantised — and whether any product is int8 (the
    class-factorised head gathers per-class rows of its weight: it stays float)."""
    if isinstance(head, FullSoftmax):
        return Int8FullSoftmax(head), True
    if not any(isinstance(m, nn.Linear) for m in head.modules()):
        return head, False
    return _quantize_dynamic(head, {nn.Linear}), True


def quantize_lm(model) -> tuple[nn.Module, str]:
    """An int8 copy of a language model (eval mode, CPU) and a one-line description of
    what was quantised. The model given is left as it was."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("--int8: PyTorch's int8 kernels run on the CPU; use --device cpu")
    model = copy.deepcopy(model).eval()
    int8_layers = 0
    for k, layer in enumerate(model.layers):
        twin = torch_twin(layer.cell)
        if twin is not None and twin[0] in _QUANTISED_TWINS and not layer.bidirectional:
            model.layers[k] = Int8Recurrent(layer)
            int8_layers += 1
    model.head, int8_head = _int8_head(model.head)
    cell, softmax = model.config.cell, model.config.softmax
    head = "output layer int8" if int8_head else f"output layer float ({softmax} softmax)"
    layers = (f"recurrent layers int8 ({int8_layers})" if int8_layers else
              f"recurrent layers float (PyTorch has no int8 kernel for cell {cell!r})")
    return model, f"int8: {head}, {layers}, embedding float"

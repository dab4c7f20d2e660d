"""PyTorch's fused RNN kernels (oneDNN/ATen on CPU, cuDNN on GPU) for the standard cells.

The only file of rnnkit that touches a private PyTorch API (``torch._VF``): the same entry
points ``torch.nn.RNN/LSTM/GRU`` call. Parameters are passed in ``torch.nn``'s flat order —
per layer and direction ``weight_ih, weight_hh[, bias_ih, bias_hh]`` — so the results are
those of the matching ``torch.nn`` module.
"""

from __future__ import annotations

import torch
from torch import Tensor, _VF

_KERNELS = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


def native_stack(mode: str, data: Tensor, batch_sizes: Tensor | None, hx: tuple[Tensor, ...],
                 flat_weights: list[Tensor], has_biases: bool, num_layers: int,
                 dropout: float, training: bool, bidirectional: bool):
    """Run a whole stack on PyTorch's fused kernel.

    Args:
        mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU" (a cell's ``native_mode``).
        data: (T, B, I) time-major input when ``batch_sizes`` is None, else packed (N, I).
        batch_sizes: the packed batch sizes (a CPU int64 tensor), or None.
        hx: initial states, (L*D, B, H) each — ``(h0,)`` or ``(h0, c0)``.

    Returns:
        output ((T, B, D*H) or packed (N, D*H)) and the final states, (L*D, B, H) each.
    """
    if data.is_cuda and _cudnn_autocast_would_take_half():
        # under CUDA autocast cuDNN's RNN casts to float16 whatever the autocast dtype
        # (ATen's AutocastRNN.cpp: bf16 would silently run as fp16, unscaled): the layer
        # runs in float32 instead, as rnnkit's own engine does under autocast
        with torch.autocast("cuda", enabled=False):
            return native_stack(mode, data.float(), batch_sizes, tuple(s.float() for s in hx),
                                [w.float() for w in flat_weights], has_biases, num_layers,
                                dropout, training, bidirectional)
    if dropout and training and num_layers > 1 and data.is_cuda:
        return _layer_by_layer(mode, data, batch_sizes, hx, flat_weights, has_biases,
                               num_layers, dropout, bidirectional)
    dropout = dropout if num_layers > 1 else 0.0    # none to apply; on CUDA it would still
    kernel = _KERNELS[mode]                         # draw from the generator (resume)
    state = hx if mode == "LSTM" else hx[0]
    if batch_sizes is None:
        result = kernel(data, state, flat_weights, has_biases, num_layers, dropout, training,
                        bidirectional, False)
    else:
        result = kernel(data, batch_sizes, state, flat_weights, has_biases, num_layers,
                        dropout, training, bidirectional)
    return result[0], tuple(result[1:])


def _cudnn_autocast_would_take_half() -> bool:
    """Whether CUDA autocast is on with a dtype other than float16 (bfloat16): cuDNN's RNN
    would run in float16 all the same."""
    return (torch.is_autocast_enabled("cuda")
            and torch.get_autocast_dtype("cuda") != torch.float16)


def _layer_by_layer(mode, data, batch_sizes, hx, flat_weights, has_biases, num_layers,
                    dropout, bidirectional):
    """:func:`native_stack` one layer at a time with ``F.dropout`` between layers: cuDNN
    draws its own between-layer dropout from a random state of its own, which a train state
    cannot hold, so that a resumed run would draw other masks."""
    import torch
    import torch.nn.functional as F

    D = 2 if bidirectional else 1
    per_layer = len(flat_weights) // num_layers
    x, finals = data, []
    for layer in range(num_layers):
        if layer:
            x = F.dropout(x, dropout, training=True)
        states = tuple(s[layer * D:(layer + 1) * D] for s in hx)
        x, final = native_stack(mode, x, batch_sizes, states,
                                flat_weights[layer * per_layer:(layer + 1) * per_layer],
                                has_biases, 1, 0.0, True, bidirectional)
        finals.append(final)
    return x, tuple(torch.cat(parts) for parts in zip(*finals))

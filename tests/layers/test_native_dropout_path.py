"""The CUDA path of a fused stack with between-layer dropout runs one layer at a time with
``F.dropout`` (torch's generator, held by the train state): it equals the fused stack."""

from __future__ import annotations

import pytest
import torch

from rnnkit import native


@pytest.mark.parametrize("mode, module", [("LSTM", torch.nn.LSTM), ("GRU", torch.nn.GRU)])
@pytest.mark.parametrize("packed", [False, True])
def test_layer_by_layer_equals_the_fused_stack(mode, module, packed):
    torch.manual_seed(0)
    net = module(5, 7, num_layers=3, bidirectional=True).double()
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    states = tuple(torch.randn(6, 3, 7, dtype=torch.float64)
                   for _ in range(2 if mode == "LSTM" else 1))
    batch_sizes = None
    if packed:
        seq = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4, 2]))
        x, batch_sizes = seq.data, seq.batch_sizes
    flat = list(net._flat_weights)
    fused = native.native_stack(mode, x, batch_sizes, states, flat, True, 3, 0.0, True, True)
    layered = native._layer_by_layer(mode, x, batch_sizes, states, flat, True, 3, 0.0, True)
    torch.testing.assert_close(layered[0], fused[0])
    for a, b in zip(layered[1], fused[1]):
        torch.testing.assert_close(a, b)


def test_its_dropout_draws_from_torch_generator():
    torch.manual_seed(0)
    net = torch.nn.LSTM(4, 4, num_layers=2)
    x, states = torch.randn(3, 2, 4), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4))
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(native._layer_by_layer("LSTM", x, None, states, list(net._flat_weights),
                                           True, 2, 0.5, False)[0])
    torch.manual_seed(6)
    other = native._layer_by_layer("LSTM", x, None, states, list(net._flat_weights), True, 2,
                                   0.5, False)[0]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], other)

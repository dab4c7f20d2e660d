"""Initialisation schemes (rnnkit.layers.init) for every cell, layer and direction."""

import math

import pytest
import torch

import rnnkit
from conftest import each_variant, make_layer

I, H = 3, 5
STACK = {"num_layers": 2, "bidirectional": True}


def _params(layer, prefix):
    return [(n, p.detach()) for n, p in layer.named_parameters() if n.startswith(prefix)]


def _recurrent_blocks(w):
    """The (H, H) recurrent matrix of each gate block of ``weight_hh``: its rows, or the
    diagonal matrix of a diagonal recurrence's (H,) vector."""
    return [b if b.dim() == 2 else torch.diag(b) for b in w.split(H)]


def _weights_hh(layer):
    """Every weight_hh of a 2-layer bidirectional stack: four, or none for a cell
    without a recurrent weight."""
    weights_hh = _params(layer, "weight_hh")
    assert len(weights_hh) == (0 if layer.cell.weight_hh_shape(H) is None else 4)
    return weights_hh


@each_variant
def test_orthogonal_init_makes_each_recurrent_block_orthogonal(kind, options):
    layer = make_layer(kind, options, I, H, init="orthogonal", **STACK)
    eye = torch.eye(H)
    for name, w in _weights_hh(layer):
        blocks = _recurrent_blocks(w)
        assert len(blocks) == layer.cell.gates
        for block in blocks:
            torch.testing.assert_close(block @ block.t(), eye, atol=1e-5, rtol=0,
                                       msg=lambda m, name=name: f"{name}: {m}")
        assert not torch.allclose(blocks[0], blocks[-1]) or len(blocks) == 1
    for name, w in _params(layer, "weight_ih"):                 # Glorot-uniform per block
        bound = math.sqrt(6.0 / (w.shape[1] + H))
        assert w.abs().max() <= bound, name
        assert w.abs().max() > 0.5 * bound, name
    for name, p in _params(layer, "bias") + _params(layer, "weight_peephole"):
        assert torch.equal(p, torch.zeros_like(p)), name


@each_variant
def test_identity_init_makes_recurrent_blocks_identity_and_biases_zero(kind, options):
    layer = make_layer(kind, options, I, H, init="identity", **STACK)
    eye = torch.eye(H)
    for name, w in _weights_hh(layer):
        for block in _recurrent_blocks(w):
            assert torch.equal(block, eye), name
    for name, w in _params(layer, "weight_ih"):                 # N(0, 0.001²)
        assert 0 < w.abs().max() < 0.01, name
    for name, p in _params(layer, "bias") + _params(layer, "weight_peephole"):
        assert torch.equal(p, torch.zeros_like(p)), name


@pytest.mark.parametrize("init", ["uniform", "orthogonal", "identity"])
@pytest.mark.parametrize("peephole", [False, True])
def test_forget_bias_sets_total_forget_gate_bias(init, peephole):
    layer = rnnkit.LSTM(I, H, init=init, forget_bias=1.0, peephole=peephole, **STACK)
    plain = rnnkit.LSTM(I, H, init=init, peephole=peephole, **STACK)
    suffixes = ["_l0", "_l0_reverse", "_l1", "_l1_reverse"]
    for s in suffixes:
        b_ih, b_hh = getattr(layer, "bias_ih" + s).detach(), getattr(layer, "bias_hh" + s).detach()
        torch.testing.assert_close(b_ih[H:2 * H] + b_hh[H:2 * H], torch.ones(H), rtol=0, atol=0)
        if init != "uniform":                 # the other gates keep the scheme's zeros
            other = torch.cat([b_ih[:H], b_ih[2 * H:], b_hh[:H], b_hh[2 * H:]])
            assert torch.equal(other, torch.zeros_like(other))
        # without forget_bias the forget gate's total bias is not 1
        p_ih, p_hh = getattr(plain, "bias_ih" + s).detach(), getattr(plain, "bias_hh" + s).detach()
        assert not torch.allclose(p_ih[H:2 * H] + p_hh[H:2 * H], torch.ones(H))


@each_variant
def test_uniform_default_init_is_bounded_by_one_over_sqrt_hidden(kind, options):
    layer = make_layer(kind, options, I, H, **STACK)
    if layer.cell.default_init != "uniform":                    # the IRNN starts at identity
        layer = make_layer(kind, options, I, H, init="uniform", **STACK)
    assert layer.init == "uniform"
    bound = 1.0 / math.sqrt(H)
    scaled = []                                                 # every value, range -> [-1, 1]
    for name, p in layer.named_parameters():
        constant = name.rsplit("_l", 1)[0]
        if constant in layer.cell.extra_param_values:           # a declared constant start
            assert torch.equal(p, torch.full_like(p, layer.cell.extra_param_values[constant]))
            continue
        low, high = (-bound, bound)
        if name.startswith("weight_hh") and layer.cell.weight_hh_uniform is not None:
            low, high = layer.cell.weight_hh_uniform             # the cell's own range
        assert low <= p.min() and p.max() <= high, name
        assert p.unique().numel() == p.numel(), name             # not a constant
        scaled.append((2 * p.detach().flatten() - low - high) / (high - low))
    scaled = torch.cat(scaled)
    assert scaled.min() < -0.9 and scaled.max() > 0.9           # spread over the ranges


@pytest.mark.parametrize("init", ["uniform", "orthogonal", "identity"])
@pytest.mark.parametrize("kind", ["layernorm_lstm", "layernorm_gru"])
def test_layer_norm_gains_start_at_one_and_shifts_at_zero(kind, init):
    layer = rnnkit.RecurrentStack(I, H, 2, cell=kind, init=init, bidirectional=True)
    values = layer.cell.extra_param_values
    assert values and set(values) == set(layer.cell.extra_param_shapes(H))
    for name, p in layer.named_parameters():
        base = name.rsplit("_l", 1)[0]
        if base.startswith("ln_"):
            assert torch.equal(p, torch.full_like(p, values[base])), name
    with pytest.raises(ValueError, match="forget_bias: only for a cell with a forget gate "
                                         "whose biases reach it"):
        rnnkit.RecurrentStack(I, H, cell=kind, forget_bias=1.0)


def test_irnn_starts_at_the_identity():
    layer = rnnkit.RecurrentStack(I, H, cell="irnn")
    assert layer.init == "identity"
    torch.testing.assert_close(layer.weight_hh_l0.detach(), torch.eye(H))


@pytest.mark.parametrize("init", ["uniform", "orthogonal", "identity"])
def test_reset_parameters_reinitialises_by_scheme(init):
    layer = rnnkit.GRU(I, H, init=init)
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(7.0)
    layer.reset_parameters()
    for name, p in layer.named_parameters():
        assert (p != 7.0).any(), name
        assert p.abs().max() <= 1.0, name


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_init_reaches_weight_hh_with_weight_dropout(kind):
    """Regression: initialisation in training mode must write the parameter itself, not a
    DropConnect-ed copy of it (weight_hh was once left as uninitialised memory)."""
    layer = make_layer(kind, {}, I, H, init="identity", weight_dropout=0.5)
    assert layer.training
    for block in layer.weight_hh_l0.detach().split(H):
        assert torch.equal(block, torch.eye(H))

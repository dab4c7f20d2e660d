"""The layers' public step API and whole-layer pickling.

- ``step(x, state)`` one time step at a time gives what ``forward`` gives on the whole
  sequence (every registered cell, deep stacks, float64);
- ``torch.save(layer)`` loads with ``torch.load(weights_only=True)`` with only the layer's
  own class allowlisted, as for ``torch.nn.LSTM``.
"""

import io
import pickle

import pytest
import torch
from conftest import each_variant, make_layer, num_states

import rnnkit

I, H, T, B = 3, 4, 6, 2


@each_variant
def test_step_by_step_matches_forward(kind, options):
    layer = make_layer(kind, options, I, H, num_layers=2, dtype=torch.float64).eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        out, final = layer(x)
        state = layer.initial_state(B)
        steps = []
        for t in range(T):
            y, state = layer.step(x[t], state)
            steps.append(y)
    torch.testing.assert_close(torch.stack(steps), out, rtol=1e-12, atol=1e-12)
    finals = final if isinstance(final, tuple) else (final,)
    states = state if isinstance(state, tuple) else (state,)
    assert len(states) == num_states(kind, options)
    for a, b in zip(states, finals):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@each_variant
def test_initial_state_is_the_cells_declaration(kind, options):
    layer = make_layer(kind, options, I, H, num_layers=3)
    state = layer.initial_state(5)
    states = state if isinstance(state, tuple) else (state,)
    assert len(states) == layer.cell.num_states
    declared = layer.cell.initial_state(5, H)
    for s, d in zip(states, declared):
        assert s.shape == (3, 5, H)
        torch.testing.assert_close(s, d.expand(3, -1, -1))


def test_step_from_a_given_state_continues_the_sequence():
    layer = rnnkit.LSTM(I, H, 2).eval()
    x = torch.randn(T, B, I)
    with torch.no_grad():
        out, _ = layer(x)
        _, state = layer(x[:3])
        y, _ = layer.step(x[3], state)
    torch.testing.assert_close(y, out[3])


def test_step_refuses_a_bidirectional_stack_and_bad_input():
    with pytest.raises(ValueError, match="step: a bidirectional stack needs the whole sequence"):
        rnnkit.GRU(I, H, bidirectional=True).step(torch.randn(B, I))
    with pytest.raises(ValueError, match=r"step: expected x of shape \(B, 3\), got \(4, 2, 3\)"):
        rnnkit.GRU(I, H).step(torch.randn(4, 2, I))
    with pytest.raises(ValueError, match=r"x: expected last dimension input_size=3"):
        rnnkit.GRU(I, H).step(torch.randn(B, 5))


def _saved(module) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(("cls", "kwargs"), [
    (rnnkit.LSTM, {}), (rnnkit.LSTM, {"peephole": True}), (rnnkit.GRU, {}),
    (rnnkit.GRU, {"reset_after": False}), (rnnkit.RNN, {"nonlinearity": "relu"}),
    (rnnkit.RNN, {"nonlinearity": "sigmoid"})],
    ids=["lstm", "lstm_peephole", "gru", "gru_reset_before", "rnn_relu", "rnn_sigmoid"])
def test_layer_classes_load_weights_only_with_their_class_allowlisted(cls, kwargs):
    layer = cls(I, H, 2, bidirectional=True, **kwargs)
    buf = _saved(layer)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(_saved(layer), weights_only=True)         # nothing allowlisted: refused
    with torch.serialization.safe_globals([cls]):
        loaded = torch.load(buf, weights_only=True)
    x = torch.randn(T, B, I)
    torch.testing.assert_close(loaded(x)[0], layer(x)[0], rtol=0, atol=0)
    assert repr(loaded.cell) == repr(layer.cell)


@each_variant
def test_every_registered_cell_pickles_as_a_stack(kind, options):
    layer = make_layer(kind, options, I, H, num_layers=2)
    with torch.serialization.safe_globals([rnnkit.RecurrentStack]):
        loaded = torch.load(_saved(layer), weights_only=True)
    x = torch.randn(T, B, I)
    torch.testing.assert_close(loaded(x)[0], layer(x)[0], rtol=0, atol=0)
    assert type(loaded.cell) is type(layer.cell)


def test_a_stack_of_a_user_cell_by_path_pickles_and_copies():
    import copy

    layer = rnnkit.RecurrentStack(I, H, cell="examples.gated_cell:GatedCell")
    x = torch.randn(T, B, I)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        torch.testing.assert_close(clone(x)[0], layer(x)[0], rtol=0, atol=0)

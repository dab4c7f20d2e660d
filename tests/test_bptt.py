"""The BPTT engine (rnnkit.bptt, rnnkit.autograd): hand backward vs gradcheck and autograd,
variable lengths, reverse direction."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnkit.bptt
from conftest import (assert_all_close, cell_params, each_variant, grads_of, random_state,
                      weighted_sum)
from rnnkit.autograd import recurrent_autograd, recurrent_bptt
from rnnkit.cells import make_cell

I, H = 2, 3
BATCH_SIZES = {"uniform": [3, 3, 3, 3], "variable": [3, 3, 2, 1]}


def _inputs(cell, batch_sizes, bias=True):
    """Packed x (N, I), the layer-direction's parameters, and initial states."""
    x = torch.randn(sum(batch_sizes), I, dtype=torch.float64, requires_grad=True)
    params = cell_params(cell, I, H, bias=bias)
    state0 = random_state(cell, batch_sizes[0], H)
    return x, params, state0


def _gradcheck(cell, batch_sizes, reverse, bias):
    x, p, state0 = _inputs(cell, batch_sizes, bias)
    k = cell.num_states

    def layer(x, weight_ih, weight_hh, *rest):
        b_ih, b_hh, rest = (rest[0], rest[1], rest[2:]) if bias else (None, None, rest)
        out, final = recurrent_bptt(cell, x, batch_sizes, rest[:k], weight_ih, weight_hh,
                                    b_ih, b_hh, rest[k:], reverse=reverse)
        return (out, *final)

    biases = (p["bias_ih"], p["bias_hh"]) if bias else ()
    inputs = (x, p["weight_ih"], p["weight_hh"], *biases, *state0, *p["extra"])
    assert torch.autograd.gradcheck(layer, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("sizes", list(BATCH_SIZES))
@each_variant
def test_gradcheck_float64(kind, options, sizes, reverse):
    _gradcheck(make_cell(kind, **options), BATCH_SIZES[sizes], reverse, bias=True)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@each_variant
def test_gradcheck_float64_without_biases(kind, options, reverse):
    _gradcheck(make_cell(kind, **options), BATCH_SIZES["variable"], reverse, bias=False)


def _engine_results(engine, cell, x, batch_sizes, state0, p, reverse, bias=True):
    """Outputs and the gradients of a fixed random loss w.r.t. every input."""
    b_ih, b_hh = (p["bias_ih"], p["bias_hh"]) if bias else (None, None)
    out, final = engine(cell, x, batch_sizes, state0, p["weight_ih"], p["weight_hh"], b_ih, b_hh,
                        p["extra"], reverse=reverse)
    wrt = [x, p["weight_ih"], p["weight_hh"], b_ih, b_hh, *state0, *p["extra"]]
    names = (["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
             + [f"state0[{k}]" for k in range(len(state0))]
             + [f"extra[{k}]" for k in range(len(p["extra"]))])
    names = [n for n, t in zip(names, wrt) if t is not None]    # what this cell has
    wrt = [t for t in wrt if t is not None]
    return [out, *final, *grads_of(weighted_sum((out, final)), wrt)], \
        ["out"] + [f"final[{k}]" for k in range(len(final))] + [f"d{n}" for n in names]


# T = 6 steps, B = 4; the prepared backward factors in one block, or blocks of 1 and 4 steps
@pytest.mark.parametrize("steps_per_block", [None, 1, 4], ids=["one_block", "block1", "block4"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@each_variant
def test_bptt_matches_autograd_reference(kind, options, reverse, bias, steps_per_block,
                                         monkeypatch):
    cell = make_cell(kind, **options)
    batch_sizes = [4, 3, 3, 2, 1, 1]
    if steps_per_block is not None:
        monkeypatch.setattr(rnnkit.bptt, "PREPARE_BLOCK",
                            steps_per_block * batch_sizes[0] * H * cell.gates)
    x, p, state0 = _inputs(cell, batch_sizes, bias)
    hand, names = _engine_results(recurrent_bptt, cell, x, batch_sizes, state0, p, reverse, bias)
    ref, _ = _engine_results(recurrent_autograd, cell, x, batch_sizes, state0, p, reverse, bias)
    assert_all_close(hand, ref, names, rtol=1e-10, atol=1e-12)


def _padded_batch(lengths):
    """Padded (T, B, I) input and its packed form; lengths sorted longest first."""
    x = torch.randn(max(lengths), len(lengths), I, dtype=torch.float64)
    return x, pack_padded_sequence(x, torch.tensor(lengths))


LENGTHS = [5, 3, 3, 1]


@pytest.mark.parametrize("engine", [recurrent_bptt, recurrent_autograd], ids=["bptt", "autograd"])
@each_variant
def test_final_state_is_state_at_own_last_token(kind, options, engine):
    cell = make_cell(kind, **options)
    x, packed = _padded_batch(LENGTHS)
    p = cell_params(cell, I, H)
    state0 = random_state(cell, len(LENGTHS), H)
    out, final = engine(cell, packed.data, packed.batch_sizes.tolist(), state0, p["weight_ih"],
                        p["weight_hh"], p["bias_ih"], p["bias_hh"], p["extra"])
    padded, _ = pad_packed_sequence(PackedSequence(out, packed.batch_sizes))
    for b, n in enumerate(LENGTHS):
        alone_out, alone_final = engine(cell, x[:n, b], [1] * n, tuple(s[b:b + 1] for s in state0),
                                        p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                        p["bias_hh"], p["extra"])
        torch.testing.assert_close(padded[:n, b], alone_out, rtol=1e-12, atol=1e-12)
        assert_all_close([f[b:b + 1] for f in final], alone_final, rtol=1e-12, atol=1e-12)
        # and not the state after the padded steps: the last real output is the final h
        torch.testing.assert_close(final[0][b], padded[n - 1, b], rtol=0, atol=0)


@pytest.mark.parametrize("engine", [recurrent_bptt, recurrent_autograd], ids=["bptt", "autograd"])
@each_variant
def test_reverse_starts_at_own_last_token(kind, options, engine):
    """The reverse pass over example b equals a forward pass over its own tokens flipped."""
    cell = make_cell(kind, **options)
    x, packed = _padded_batch(LENGTHS)
    p = cell_params(cell, I, H)
    state0 = random_state(cell, len(LENGTHS), H)
    out, final = engine(cell, packed.data, packed.batch_sizes.tolist(), state0, p["weight_ih"],
                        p["weight_hh"], p["bias_ih"], p["bias_hh"], p["extra"], reverse=True)
    padded, _ = pad_packed_sequence(PackedSequence(out, packed.batch_sizes))
    for b, n in enumerate(LENGTHS):
        flipped_out, flipped_final = engine(
            cell, x[:n, b].flip(0), [1] * n, tuple(s[b:b + 1] for s in state0),
            p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], p["extra"])
        torch.testing.assert_close(padded[:n, b], flipped_out.flip(0), rtol=1e-12, atol=1e-12)
        assert_all_close([f[b:b + 1] for f in final], flipped_final, rtol=1e-12, atol=1e-12)


@each_variant
def test_engines_agree_on_uniform_batch_with_and_without_packing(kind, options):
    """A batch without lengths is the packed layout with batch_sizes [B] * T."""
    cell = make_cell(kind, **options)
    T, B = 4, 3
    x = torch.randn(T, B, I, dtype=torch.float64)
    p = cell_params(cell, I, H)
    state0 = random_state(cell, B, H)
    out, final = recurrent_bptt(cell, x.reshape(T * B, I), [B] * T, state0, p["weight_ih"],
                                p["weight_hh"], p["bias_ih"], p["bias_hh"], p["extra"])
    for b in range(B):
        alone_out, alone_final = recurrent_bptt(
            cell, x[:, b], [1] * T, tuple(s[b:b + 1] for s in state0), p["weight_ih"],
            p["weight_hh"], p["bias_ih"], p["bias_hh"], p["extra"])
        torch.testing.assert_close(out.view(T, B, H)[:, b], alone_out, rtol=1e-12, atol=1e-12)
        assert_all_close([f[b:b + 1] for f in final], alone_final, rtol=1e-12, atol=1e-12)

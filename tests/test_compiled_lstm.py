"""The compiled LSTM variants (rnnkit/compiled/lstm.cpp) beyond what
test_compiled.py's CELLS covers: zoneout on the peephole LSTM, zoneout in evaluation mode
(the scalar p, nothing drawn), and the training masks themselves — the same draws as the
Python engine's. Against the Python engine, as test_compiled.py does."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import compiled
from rnnkit.autograd import recurrent_python
from rnnkit.cells import make_cell
from rnnkit.cells.dropout import Zoneout
from test_compiled import (LENGTHS, TOL, args, compare_unrolls, module,  # noqa: F401
                           problem, run)

# "<cell>+zoneout" in training mode (masks drawn), "<cell>+zoneout:eval" in evaluation
VARIANTS = ["lstm_peephole+zoneout", "lstm+zoneout:eval", "lstm_peephole+zoneout:eval"]


def variant(name, lengths, dtype, **kw):
    """problem() of test_compiled.py for the cell of ``name`` (its parameters, same seed)."""
    base, _, mode = name.partition(":")
    cell, x, batch_sizes, params, state0 = problem(base, lengths, dtype, **kw)
    if mode == "eval":
        cell = cell.for_mode(False)
    return cell, x, batch_sizes, params, state0


def test_the_variants_have_a_kernel():
    for name in ("lstm_peephole", "lstm+zoneout", "lstm_peephole+zoneout"):
        for training in (False, True):
            cell = make_cell(name.partition("+")[0], zoneout=0.25 if "+" in name else 0.0)
            assert compiled.kernel_of(cell.for_mode(training)) is not None, name
    # zoneout around another cell is not the LSTM's loop
    assert not any(type(k).__name__.startswith("LSTM") and k.accepts(cell)
                   for k in compiled.KERNELS
                   for cell in [Zoneout(make_cell("gru"), 0.25)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("name", VARIANTS)
def test_layer_matches_python_engine(module, name, lengths, reverse, dtype):
    cell, x, batch_sizes, params, state0 = variant(name, LENGTHS[lengths], dtype)
    want = run(recurrent_python, cell, x, batch_sizes, params, state0, reverse)
    got = run(compiled.recurrent_compiled, cell, x, batch_sizes, params, state0, reverse)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", VARIANTS + ["lstm+zoneout", "lstm_peephole"])
def test_unroll_matches_bptt_unroll_and_masks_are_the_engines(module, name, reverse):
    """The loops against rnnkit.bptt's in float64, the peephole gradient among them; in
    training, the masks the kernel drew are the Python engine's keep masks, step by step."""
    cell, x, batch_sizes, params, state0 = variant(name, LENGTHS["variable"], torch.float64,
                                                   H=9, seed=3)
    caches, c_caches = compare_unrolls(cell, x, batch_sizes, params, state0, reverse)
    if getattr(cell, "training", False):
        masks, start = c_caches[-1], 0
        for t, n in enumerate(batch_sizes):
            for s in range(2):
                assert torch.equal(masks[s, start:start + n], caches[t].keep[s])
            start += n


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", VARIANTS)
def test_gradcheck_float64(module, name, reverse):
    cell, x, batch_sizes, params, state0 = variant(name, [3, 2, 2, 1], torch.float64, H=3,
                                                   I=2)
    k = len(params)

    def layer(x, *rest):
        torch.manual_seed(7)
        out, final = compiled.recurrent_compiled(cell, x, batch_sizes, rest[k:],
                                                 *args(cell, rest[:k]), reverse)
        return (out, *final)

    assert torch.autograd.gradcheck(layer, (x, *params, *state0))


@pytest.mark.parametrize("name", VARIANTS)
def test_inference_forward_without_caches_matches(module, name):
    cell, x, batch_sizes, params, state0 = variant(name, LENGTHS["variable"], torch.float32)
    with torch.no_grad():
        results = []
        for engine in (recurrent_python, compiled.recurrent_compiled):
            torch.manual_seed(7)
            out, final = engine(cell, x, batch_sizes, state0, *args(cell, params), True)
            results.append((out, *final))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("name", ["lstm_peephole", "lstm_peephole+zoneout:eval"])
def test_peephole_gradient_summed_over_two_threads(module, name):
    """H = 512 over 2 intra-op threads: each thread sums its rows' dL/dp, added after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cell, x, batch_sizes, params, state0 = variant(name, [3] * 40 + [2] * 24,
                                                       torch.float64, H=512, I=8)
        params = [p.detach().mul(0.1).requires_grad_() for p in params]
        want = run(recurrent_python, cell, x, batch_sizes, params, state0, False)
        got = run(compiled.recurrent_compiled, cell, x, batch_sizes, params, state0, False)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("training", [True, False])
def test_deep_bidirectional_peephole_zoneout_layer(module, training):
    """Through the public layer (train and eval mode): 2 layers, both directions, lengths."""
    class CompiledStack(rnnkit.RecurrentStack):
        def _stack(self, engine, x, batch_sizes, state0):
            return super()._stack(compiled.recurrent_compiled, x, batch_sizes, state0)

    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, backend="bptt",
              cell="lstm_peephole", cell_options={"zoneout": 0.25})
    ref, fast = rnnkit.RecurrentStack(5, 7, **kw), CompiledStack(5, 7, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 5)
    lengths = torch.tensor([3, 6, 1, 4])
    grads = []
    for model in (ref, fast):
        model.train(training)
        torch.manual_seed(7)
        xi = x.clone().requires_grad_()
        out, (h, c) = model(xi, lengths=lengths)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + (c * c).sum()
        loss.backward()
        grads.append([out.detach(), h.detach(), c.detach(), xi.grad,
                      *(p.grad for p in model.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])

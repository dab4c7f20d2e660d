"""The layer-normalised cells' compiled loops (rnnkit/compiled/layernorm.cpp) beyond what
tests/test_compiled.py checks for every cell: no biases (bias_hh None), the gains' and shifts'
gradients as separate tensors, the sums over a long stacked time axis in float32, inference
without caches through the loops themselves."""

from __future__ import annotations

import pytest
import torch

from rnnkit import compiled
from rnnkit.autograd import recurrent_python
from rnnkit.bptt import input_projection, unroll_forward
from rnnkit.cells import make_cell
from rnnkit.cells.base import engine_params
from test_compiled import module  # noqa: F401 (the fixture)

CELLS = ("layernorm_lstm", "layernorm_gru")
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}




def problem(name, lengths, dtype, H=6, I=5, bias=True, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    cell = make_cell(name)
    batch_sizes = [sum(1 for n in lengths if n > t) for t in range(max(lengths))]
    N, B = sum(batch_sizes), batch_sizes[0]

    def rand(*shape):
        return ((torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) * scale).requires_grad_()

    x = rand(N, I)
    params = {k: rand(*s) for k, s in cell.param_shapes(I, H, bias=bias).items()}
    state0 = tuple(rand(B, H) for _ in range(cell.num_states))
    return cell, x, batch_sizes, params, state0


def run(engine, cell, x, batch_sizes, params, state0, reverse=False):
    w_ih, w_hh, b_ih, b_hh, extra = engine_params(params)
    out, final = engine(cell, x, batch_sizes, state0, w_ih, w_hh, b_ih, b_hh, extra, reverse)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)).sum()
    for s in final:       # the same weights whatever the dtype: drawn in float64
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=torch.float64).to(s)).sum()
    grads = torch.autograd.grad(loss, [x, *params.values(), *state0])
    return [out.detach(), *(s.detach() for s in final), *grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CELLS)
def test_without_biases_matches_python_engine(module, name, dtype):
    """bias=False: no bias_hh in the step product (None passed to the loops)."""
    cell, x, batch_sizes, params, state0 = problem(name, [6, 4, 4, 1], dtype, bias=False)
    assert "bias_hh" not in params and compiled.applies(cell, x, state0, params["weight_ih"],
                                                        params["weight_hh"], None, None,
                                                        engine_params(params)[4])
    want = run(recurrent_python, cell, x, batch_sizes, params, state0, reverse=True)
    got = run(compiled.recurrent_compiled, cell, x, batch_sizes, params, state0, reverse=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("name", CELLS)
def test_every_gradient_is_its_own_tensor(module, name):
    """The LSTM's shift gradients of ih and hh are equal (both Σ da) but two tensors, as the
    Python engine gives them; no two parameters' .grad share memory."""
    cell, x, batch_sizes, params, state0 = problem(name, [5, 5, 3], torch.float32)
    w_ih, w_hh, b_ih, b_hh, extra = engine_params(params)
    out, final = compiled.recurrent_compiled(cell, x, batch_sizes, state0, w_ih, w_hh, b_ih,
                                             b_hh, extra)
    (out.sum() + final[0].sum()).backward()
    ptrs = [p.grad.data_ptr() for p in params.values()]
    assert len(set(ptrs)) == len(ptrs)
    for p in params.values():
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype
    if name == "layernorm_lstm":
        torch.testing.assert_close(params["ln_shift_ih"].grad, params["ln_shift_hh"].grad)


@pytest.mark.parametrize("name", CELLS)
def test_long_sequence_sums_in_float32(module, name):
    """The gains' and shifts' gradients are sums over every packed row (here 2,000): float32
    against the float64 Python engine, to float32 rounding."""
    cell, x, batch_sizes, params, state0 = problem(name, [100] * 16 + [60] * 4, torch.float64,
                                                   H=16, I=8, scale=0.5)
    want = run(recurrent_python, cell, x, batch_sizes, params, state0)

    def single(t):
        return t.detach().float().requires_grad_()

    got = run(compiled.recurrent_compiled, cell, single(x), batch_sizes,
              {k: single(p) for k, p in params.items()}, tuple(single(s) for s in state0))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", CELLS)
def test_unroll_forward_without_caches(module, name, reverse, dtype):
    """keep=False: the loops' scratch in place of the caches, N(xw) a step at a time — the
    same outputs and final states, no caches."""
    cell, x, batch_sizes, params, state0 = problem(name, [7, 5, 5, 2, 1], dtype, H=9)
    w_ih, w_hh, b_ih, b_hh, extra = engine_params({k: p.detach() for k, p in params.items()})
    state0 = tuple(s.detach() for s in state0)
    xw = input_projection(cell, x.detach(), w_ih, b_ih, b_hh)
    out, final, _ = unroll_forward(cell, xw, batch_sizes, state0, w_hh, b_hh, extra, reverse)
    c_out, c_final, caches = compiled.unroll_forward(cell, xw, batch_sizes, state0, w_hh, b_hh,
                                                     extra, reverse, keep=False)
    assert caches == ()
    for a, b in zip((c_out, *c_final), (out, *final)):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_large_layer_matches_python_engine(module):
    """H = 300 (not a multiple of the vector width), a step weight past the micro-kernel's
    size, float32: the block statistics over long rows."""
    cell, x, batch_sizes, params, state0 = problem("layernorm_lstm", [4, 4, 3], torch.float32,
                                                   H=300, I=7, scale=0.1)
    want = run(recurrent_python, cell, x, batch_sizes, params, state0)
    got = run(compiled.recurrent_compiled, cell, x, batch_sizes, params, state0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)

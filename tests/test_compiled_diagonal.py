"""The compiled loops of the cells without a recurrent matrix (rnnkit/compiled/diagonal.cpp:
IndRNN, minGRU, minLSTM) beyond tests/test_compiled.py: the column split over two threads
with variable lengths, minLSTM's normalisation at extreme pre-activations, the inference
forward's empty caches, outputs changed in place before the backward."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import compiled
from rnnkit.autograd import recurrent_python
from rnnkit.bptt import input_projection, unroll_backward, unroll_forward
from rnnkit.cells import make_cell
from rnnkit.cells.base import engine_params
from test_compiled import module  # noqa: F401 (the fixture)

CELLS = ("indrnn", "min_gru", "min_lstm")
F64 = dict(rtol=1e-10, atol=1e-12)




def params_of(cell, I, H, dtype, g, scale=1.0):
    shapes = cell.param_shapes(I, H)
    return engine_params({name: (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) * scale
                          for name, shape in shapes.items()})


def both_unrolls(cell, x, batch_sizes, state0, params, reverse):
    """(Python engine, compiled loop): out, final, dxw, dhw, dstate0, dweight_hh."""
    w_ih, w_hh, b_ih, b_hh, extra = params
    xw = input_projection(cell, x, w_ih, b_ih, b_hh)
    g = torch.Generator().manual_seed(5)
    results = []
    for forward, backward in ((unroll_forward, unroll_backward),
                              (compiled.unroll_forward, compiled.unroll_backward)):
        out, final, caches = forward(cell, xw, batch_sizes, state0, w_hh, b_hh, extra,
                                     reverse=reverse)
        if not results:
            dout = torch.randn(out.shape, generator=g, dtype=out.dtype)
            dfinal = tuple(torch.randn(s.shape, generator=g, dtype=s.dtype) for s in final)
        grads = backward(cell, dout, dfinal, caches, batch_sizes, w_hh, extra, reverse=reverse)
        dxw, dhw, dstate0, dweight_hh = grads[:4]
        results.append([out, *final, dxw, dhw, *dstate0, dweight_hh])
    return results


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", CELLS)
def test_columns_over_two_threads_with_variable_lengths(module, name, reverse):
    """H = 100 (not a multiple of the 16-column blocks), 48 examples of lengths 1..24: the
    threads split the columns for the whole walk; every row's final state at its own last
    step, h_{t-1} from h0 where a row starts (reverse)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(11)
        cell, H, I = make_cell(name), 100, 7
        lengths = sorted((int(v) for v in torch.randint(1, 25, (48,), generator=g)),
                         reverse=True)
        batch_sizes = [sum(1 for n in lengths if n > t) for t in range(lengths[0])]
        x = torch.randn(sum(batch_sizes), I, generator=g, dtype=torch.float64)
        state0 = (torch.randn(batch_sizes[0], H, generator=g, dtype=torch.float64),)
        params = params_of(cell, I, H, torch.float64, g)
        want, got = both_unrolls(cell, x, batch_sizes, state0, params, reverse)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ("min_lstm", "min_gru"))
def test_extreme_preactivations(module, name, dtype):
    """Gates far in saturation (|xw| up to 150, where minLSTM's f and i underflow in float32):
    finite, and the Python engine's values (minLSTM's log-space normalisation)."""
    g = torch.Generator().manual_seed(2)
    cell, H, I = make_cell(name), 8, 3
    batch_sizes = [4, 4, 3, 1]
    N = sum(batch_sizes)
    x = torch.randn(N, I, generator=g, dtype=dtype)
    state0 = (torch.randn(4, H, generator=g, dtype=dtype),)
    params = params_of(cell, I, H, dtype, g, scale=150.0)
    want, got = both_unrolls(cell, x, batch_sizes, state0, params, False)
    tol = F64 if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
            continue
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("name", CELLS)
def test_inference_forward_keeps_no_caches(module, name):
    g = torch.Generator().manual_seed(4)
    cell, H, I = make_cell(name), 5, 3
    batch_sizes = [3, 2, 2, 1]
    x = torch.randn(8, I, generator=g)
    state0 = (torch.randn(3, H, generator=g),)
    w_ih, w_hh, b_ih, b_hh, extra = params_of(cell, I, H, torch.float32, g)
    xw = input_projection(cell, x, w_ih, b_ih, b_hh)
    out, final, caches = compiled.unroll_forward(cell, xw, batch_sizes, state0, w_hh, b_hh,
                                                 extra, reverse=True, keep=False)
    want, want_final, _ = unroll_forward(cell, xw, batch_sizes, state0, w_hh, b_hh, extra,
                                         reverse=True)
    assert caches == ()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(final[0], want_final[0])


@pytest.mark.parametrize("name", CELLS)
def test_outputs_changed_in_place_before_the_backward(module, name):
    """The loops read their own copy of the outputs backward: the caller's in-place change
    raises nothing and changes no gradient."""
    grads = []
    for backend in ("bptt", "autograd"):
        torch.manual_seed(0)
        layer = rnnkit.RecurrentStack(4, 5, cell=name, backend=backend)
        out, _ = layer(torch.randn(6, 2, 4))
        out.mul_(2)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_cells_take_the_compiled_loop(module):
    """The layer's bptt backend runs these cells through the compiled loops."""
    for name in CELLS:
        cell = make_cell(name)
        assert compiled.kernel_of(cell) is not None
        layer = rnnkit.RecurrentStack(3, 4, cell=name, backend="bptt")
        x = torch.randn(5, 3)
        assert compiled.applies(cell, x, (torch.zeros(1, 4),), layer.weight_ih_l0,
                                getattr(layer, "weight_hh_l0", None), layer.bias_ih_l0,
                                getattr(layer, "bias_hh_l0", None))


def test_python_engine_reference_is_the_layer_call(module):
    """recurrent_compiled against recurrent_python, one call, float64, reverse, all cells."""
    for name in CELLS:
        g = torch.Generator().manual_seed(9)
        cell = make_cell(name)
        batch_sizes = [3, 3, 2, 1]
        x = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
        state0 = (torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True),)
        w_ih, w_hh, b_ih, b_hh, extra = params_of(cell, 4, 6, torch.float64, g)
        ps = [p.requires_grad_() for p in (w_ih, w_hh, b_ih, b_hh) if p is not None]
        results = []
        for engine in (recurrent_python, compiled.recurrent_compiled):
            out, final = engine(cell, x, batch_sizes, state0, w_ih, w_hh, b_ih, b_hh, extra,
                                True)
            loss = (out * out).sum() + (final[0] * 3).sum()
            results.append([out, final[0], *torch.autograd.grad(loss, [x, *ps, *state0])])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, **F64)


def test_indrnn_weight_gradient_over_a_long_sequence(module):
    """dweight_hh sums da ⊙ h_{t-1} over every packed row (here 16000; the loop accumulates
    in double): the float32 loop stays within float32 rounding of the float64 one."""
    g = torch.Generator().manual_seed(6)
    cell, H, B, T = make_cell("indrnn"), 16, 8, 2000
    batch_sizes = [B] * T
    xw = torch.randn(B * T, H, generator=g, dtype=torch.float64) * 0.5
    u = torch.rand(H, generator=g, dtype=torch.float64)
    state0 = (torch.zeros(B, H, dtype=torch.float64),)
    dout = torch.randn(B * T, H, generator=g, dtype=torch.float64)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        _, final, caches = compiled.unroll_forward(cell, xw.to(dtype), batch_sizes,
                                                   tuple(s.to(dtype) for s in state0),
                                                   u.to(dtype), None)
        dfinal = (torch.zeros_like(final[0]),)
        grads[dtype] = compiled.unroll_backward(cell, dout.to(dtype), dfinal, caches,
                                                batch_sizes, u.to(dtype)).dweight_hh
    torch.testing.assert_close(grads[torch.float32].double(), grads[torch.float64],
                               rtol=2e-5, atol=1e-4)

"""The compiled GRU loops (rnnkit/compiled/gru.cpp), what tests/test_compiled.py does not
reach: which kernel takes which GRU, the reset-before loop's caches against the Python
engine's, its product paths (the micro-kernel, oneDNN's packed op, at::mm) and its weight
gradients block by block. Skipped, with the reason, where the extension cannot build."""

from __future__ import annotations

import pytest
import torch

from rnnkit import compiled
from rnnkit.bptt import input_projection, unroll_backward, unroll_forward
from rnnkit.cells import make_cell
from rnnkit.cells.base import stacked
from rnnkit.cells.gru import GRUCell, GRUResetBeforeCell
from rnnkit.compiled.gru import GRUKernel, GRUResetBeforeKernel
from test_compiled import module  # noqa: F401 (the fixture)

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
LENGTHS = [7, 5, 5, 2, 1]                    # packed, variable lengths, examples sorted




def problem(dtype, H=6, I=5, seed=0, scale=1.0):
    """The engines' arguments for a reset-before GRU on a packed batch with a carried state."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) * scale

    batch_sizes = [sum(1 for n in LENGTHS if n > t) for t in range(max(LENGTHS))]
    N, B = sum(batch_sizes), batch_sizes[0]
    cell = GRUResetBeforeCell()
    x, w_ih, w_hh = rand(N, I), rand(3 * H, I), rand(3 * H, H)
    b_ih, b_hh, h0 = rand(3 * H), rand(3 * H), rand(B, H)
    xw = input_projection(cell, x, w_ih, b_ih, b_hh)         # b_hh folded in
    return cell, x, xw, batch_sizes, (h0,), w_hh, b_hh


def test_each_gru_form_has_its_own_kernel():
    assert type(compiled.kernel_of(make_cell("gru"))) is GRUKernel
    assert type(compiled.kernel_of(make_cell("gru_reset_before"))) is GRUResetBeforeKernel
    assert type(compiled.kernel_of(make_cell("gru", reset_before=True))) is GRUResetBeforeKernel

    class MyGRU(GRUResetBeforeCell):            # a user's own step: not the loops' cell
        pass

    assert compiled.kernel_of(MyGRU()) is None
    zoneout = make_cell("gru_reset_before", zoneout=0.25).for_mode(True)
    assert compiled.kernel_of(zoneout) is None
    assert not GRUResetBeforeKernel().accepts(GRUCell())
    assert not GRUResetBeforeKernel().prefers_over_native   # PyTorch has no such kernel


@pytest.mark.parametrize("reverse", [False, True])
def test_reset_before_caches_are_the_python_engines(module, reverse):
    """rz, n, h_{t-1} and r h_{t-1}, packed: the Python engine's caches, stacked."""
    cell, _, xw, batch_sizes, state0, w_hh, b_hh = problem(torch.float64)
    _, _, caches = unroll_forward(cell, xw, batch_sizes, state0, w_hh, b_hh, reverse=reverse)
    _, _, c_caches = compiled.unroll_forward(cell, xw, batch_sizes, state0, w_hh, b_hh,
                                             reverse=reverse)
    rz, n, h_prev, rh = c_caches
    for got, field in [(rz, "rz"), (n, "n"), (h_prev, "h_prev"), (rh, "product")]:
        torch.testing.assert_close(got, stacked(caches, field), **TOL[torch.float64])


@pytest.mark.parametrize("reverse", [False, True])
def test_reset_before_inference_keeps_no_caches(module, reverse):
    cell, _, xw, batch_sizes, state0, w_hh, b_hh = problem(torch.float32)
    out, final, caches = compiled.unroll_forward(cell, xw, batch_sizes, state0, w_hh, b_hh,
                                                 reverse=reverse)
    i_out, i_final, i_caches = compiled.unroll_forward(cell, xw, batch_sizes, state0, w_hh,
                                                       b_hh, reverse=reverse, keep=False)
    assert i_caches == () and len(caches) == 4
    torch.testing.assert_close(i_out, out, rtol=0, atol=0)
    torch.testing.assert_close(i_final[0], final[0], rtol=0, atol=0)


@pytest.mark.parametrize("path", ["micro", "onednn", "aten"])
@pytest.mark.parametrize("H", [6, 300])
def test_reset_before_every_product_path(module, path, H):
    """float32 through each of the step products (the brgemm micro-kernel, oneDNN's packed
    op, at::mm; at H = 300 W_rz is past the micro-kernel's 1 MiB and W_n is not): every
    gradient, dweight_hh block by block against the Python engine's, dweight_ih = dxw.T x."""
    cell, x, xw, batch_sizes, state0, w_hh, b_hh = problem(torch.float32, H=H, scale=0.3)
    out, final, caches = unroll_forward(cell, xw, batch_sizes, state0, w_hh, b_hh,
                                        reverse=True)
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(out.shape, generator=g)
    dfinal = (torch.randn(final[0].shape, generator=g),)
    dxw, dhw, dstate0, dweight_hh, _ = unroll_backward(cell, dout, dfinal, caches, batch_sizes,
                                                       w_hh, reverse=True)
    module.use_micro_kernel(path == "micro")
    module.use_onednn(path != "aten")
    try:
        c_out, c_final, c_caches = compiled.unroll_forward(cell, xw, batch_sizes, state0, w_hh,
                                                           b_hh, reverse=True)
        c = compiled.unroll_backward(cell, dout, dfinal, c_caches, batch_sizes, w_hh,
                                     reverse=True, x=x)
    finally:
        module.use_micro_kernel(True)
        module.use_onednn(True)
    tol = dict(rtol=1e-3, atol=1e-4) if H > 100 else TOL[torch.float32]
    torch.testing.assert_close(c_out, out, **tol)
    torch.testing.assert_close(c_final[0], final[0], **tol)
    assert c.dhw is c.dxw                       # bias_hh folded: one gradient for both
    torch.testing.assert_close(c.dxw, dxw, **tol)
    torch.testing.assert_close(c.dstate0[0], dstate0[0], **tol)
    torch.testing.assert_close(c.dweight_hh[:2 * H], dweight_hh[:2 * H], **tol)   # sees h
    torch.testing.assert_close(c.dweight_hh[2 * H:], dweight_hh[2 * H:], **tol)   # sees r h
    torch.testing.assert_close(c.dweight_ih, dxw.t() @ x, **tol)
    assert c.dextra == ()


def test_reset_before_bias_gradients_are_separate_tensors(module):
    """dxw is dhw for the folded bias: the two bias .grad equal, not the same storage."""
    import rnnkit

    layer = rnnkit.RecurrentStack(4, 5, cell="gru_reset_before", backend="bptt")
    out, _ = layer(torch.randn(6, 3, 4))
    out.sum().backward()
    assert layer.bias_ih_l0.grad.data_ptr() != layer.bias_hh_l0.grad.data_ptr()
    torch.testing.assert_close(layer.bias_ih_l0.grad, layer.bias_hh_l0.grad)

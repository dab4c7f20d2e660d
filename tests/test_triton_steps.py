"""The fused Triton steps (rnnkit.kernels.triton_steps) against torch.nn, on the CPU.

The kernels run through Triton's interpreter: ``TRITON_INTERPRET=1`` is set while the
module is imported (Triton reads it when a kernel is defined) and restored afterwards, so
no other test's Triton use is interpreted. Without triton these tests skip, but for the
one that proves ``rnnkit.kernels`` imports without it. Small shapes only: the interpreter
runs every program in Python.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

import rnnkit
from rnnkit.autograd import recurrent_bptt
from rnnkit.cells import torch_twin
from rnnkit.cells.base import engine_params

CELLS = ["lstm", "gru", "rnn_tanh"]             # the cells with a fused step
# T, B, I, H, bias; the last has B*H = 1035 > BLOCK (1024): two programs, the second masked
SHAPES = [(5, 3, 4, 8, True), (3, 2, 5, 13, True), (4, 2, 3, 6, False), (2, 3, 2, 345, True)]


@pytest.fixture(scope="module")
def steps():
    pytest.importorskip("triton")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = importlib.import_module("rnnkit.kernels.triton_steps")
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    if not module.INTERPRETED:
        pytest.skip("rnnkit.kernels.triton_steps was imported earlier without TRITON_INTERPRET=1")
    return module


def _loss_and_grads(out, final, inputs, dout, dfinal):
    """Gradients of ``Σ out ⊙ dout + Σ final ⊙ dfinal`` w.r.t. ``inputs``."""
    loss = (out * dout).sum() + sum((f * d).sum() for f, d in zip(final, dfinal))
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("T,B,I,H,bias", SHAPES)
@pytest.mark.parametrize("name", CELLS)
def test_layer_matches_torch_module(steps, name, T, B, I, H, bias):
    cell = rnnkit.make_cell(name)
    twin, options = torch_twin(cell)
    reference = twin(I, H, bias=bias, **options)
    params = [p.detach().clone().requires_grad_() for p in reference.parameters()]
    x = torch.randn(T, B, I, requires_grad=True)
    state0 = [torch.randn(B, H, requires_grad=True) for _ in range(cell.num_states)]

    out, final = steps.triton_layer(cell.native_mode, x, tuple(state0), params[0], params[1],
                                    *(params[2:] if bias else (None, None)))
    dout, dfinal = torch.randn_like(out), [torch.randn_like(f) for f in final]
    grads = _loss_and_grads(out, final, [x, *state0, *params], dout, dfinal)

    hx = tuple(s[None] for s in state0)
    ref_out, ref_final = reference(x, hx if cell.num_states == 2 else hx[0])
    ref_final = tuple(f[0] for f in (ref_final if cell.num_states == 2 else (ref_final,)))
    ref_grads = _loss_and_grads(ref_out, ref_final, [x, *state0, *reference.parameters()],
                                dout, dfinal)

    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, **tol, msg=lambda m: f"out: {m}")
    for k, (f, r) in enumerate(zip(final, ref_final)):
        torch.testing.assert_close(f, r, **tol, msg=lambda m: f"final state {k}: {m}")
    names = ["x", *(f"state0[{k}]" for k in range(cell.num_states)),
             *(n for n, _ in reference.named_parameters())]
    for n, g, r in zip(names, grads, ref_grads):
        torch.testing.assert_close(g, r, **tol, msg=lambda m: f"d{n}: {m}")


@pytest.mark.parametrize("name", CELLS)
def test_engine_entry_matches_hand_bptt_in_reverse(steps, name):
    """``recurrent_triton`` takes the engine's arguments (packed rows, reverse) and gives
    what rnnkit's hand BPTT gives."""
    T, B, I, H = 4, 2, 3, 5
    cell = rnnkit.make_cell(name)
    twin, options = torch_twin(cell)
    w_ih, w_hh, b_ih, b_hh, extra = engine_params(
        {n.removesuffix("_l0"): p for n, p in twin(I, H, **options).named_parameters()})
    x = torch.randn(T * B, I, requires_grad=True)
    state0 = tuple(torch.randn(B, H, requires_grad=True) for _ in range(cell.num_states))
    inputs = [x, *state0, w_ih, w_hh, b_ih, b_hh]
    results = []
    for engine in (steps.recurrent_triton, recurrent_bptt):
        out, final = engine(cell, x, [B] * T, state0, w_ih, w_hh, b_ih, b_hh, extra,
                            reverse=True)
        torch.manual_seed(1)
        dout, dfinal = torch.randn_like(out), [torch.randn_like(f) for f in final]
        results.append((out, *final, *_loss_and_grads(out, final, inputs, dout, dfinal)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_variable_lengths_and_other_cells_are_refused(steps):
    cell, I, H = rnnkit.make_cell("lstm"), 3, 4
    w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
    state0 = (torch.zeros(2, H), torch.zeros(2, H))
    with pytest.raises(ValueError, match="dense batches only"):
        steps.recurrent_triton(cell, torch.randn(3, I), [2, 1], state0, w_ih, w_hh, None, None)
    for name in rnnkit.cell_names():
        other = rnnkit.make_cell(name)
        assert steps.supports(other) == (other.native_mode in ("LSTM", "GRU", "RNN_TANH"))
        if not steps.supports(other):
            with pytest.raises(ValueError, match="no fused step"):
                steps.recurrent_triton(other, torch.randn(4, I), [2, 2], state0, w_ih, w_hh,
                                       None, None)


def test_kernels_package_imports_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)            # import triton now fails
    monkeypatch.delitem(sys.modules, "rnnkit.kernels", raising=False)
    monkeypatch.delattr(rnnkit, "kernels", raising=False)
    kernels = importlib.import_module("rnnkit.kernels")
    ok, reason = kernels.available()
    assert not ok and "triton cannot be imported" in reason
    assert kernels.available("cpu")[0] is False


@pytest.mark.parametrize("name", CELLS)
def test_backend_triton_of_a_deep_bidirectional_stack_equals_bptt(steps, name):
    torch.manual_seed(0)
    stacks = [rnnkit.RecurrentStack(3, 7, num_layers=2, bidirectional=True, cell=name,
                                    backend=backend) for backend in ("triton", "bptt")]
    stacks[0].load_state_dict(stacks[1].state_dict())
    x = torch.randn(4, 2, 3)
    results = []
    for stack in stacks:
        xi = x.clone().requires_grad_()
        out, _ = stack(xi)
        grads = torch.autograd.grad(out.square().sum(), [xi, *stack.parameters()])
        results.append((out, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_backend_triton_runs_the_engine_where_triton_cannot_run(monkeypatch):
    """A model trained with the kernels loads and runs anywhere (the same math on "bptt");
    a cell they do not compute is refused."""
    from rnnkit import kernels
    monkeypatch.setattr(kernels, "available", lambda device="cuda": (False, "no triton here"))
    torch.manual_seed(0)
    layer = rnnkit.RecurrentStack(3, 4, cell="lstm", backend="triton")
    plain = rnnkit.RecurrentStack(3, 4, cell="lstm", backend="bptt")
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3)
    assert layer.resolved_backend() == "bptt"
    torch.testing.assert_close(layer(x)[0], plain(x)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="backend: 'triton' has kernels for the LSTM"):
        rnnkit.RecurrentStack(3, 4, cell="lstm", cell_options={"peephole": True},
                              backend="triton")

"""Triton kernels for the pointwise part of one time step, and a layer driver over time.

One step of ``torch.nn``'s LSTM, GRU and tanh RNN is a matrix product and a handful of
pointwise operations. Here the product stays with cuBLAS (``torch.addmm``) and the
pointwise part — a dozen separate PyTorch kernels in :mod:`rnnkit.cells` — is one Triton
kernel, forward and backward::

    forward step  t:  a = xw_t + h_{t-1} @ weight_hh.T          (cuBLAS; GRU: the product alone)
                      h_t (, c_t), saved_t = pointwise(a, state_{t-1})            (one kernel)
    backward step t:  da_t (, dc_{t-1}) = pointwise(dout_t + dh_t, saved_t, ...)  (one kernel)
                      dh_{t-1} = da_t @ weight_hh                                 (cuBLAS)

and the weight gradients are one product each over the stacked time axis, as in
:mod:`rnnkit.bptt`. Equations in the code's symbols (the same as the cells' files):

LSTM (gate order i, f, g, o, no peepholes), ``a`` (B, 4H) with both biases folded into xw::

    i, f, o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g)
    c_t = f ⊙ c_{t-1} + i ⊙ g;  h_t = o ⊙ tanh(c_t)
    saved: the gates [i | f | g | o] (B, 4H), written over ``a``; c_t is kept as a state

GRU (reset after, gate order r, z, n), ``xw`` (B, 3H) with bias_ih, ``hw = h_{t-1} @
weight_hh.T + bias_hh`` (B, 3H) apart, because the reset gate multiplies its n block::

    r = σ(xw_r + hw_r);  z = σ(xw_z + hw_z);  n = tanh(xw_n + r ⊙ hw_n)
    h_t = n + z ⊙ (h_{t-1} − n)
    saved: [r | z | n | hw_n] (B, 4H)

tanh RNN, ``a`` (B, H) with both biases in xw: ``h_t = tanh(a)``, written over ``a``; saves
nothing beyond h_t.

Scope of this first version: dense batches of equal lengths (``batch_sizes`` all equal;
no packed variable lengths), one layer and one direction per call (``reverse`` by flipping
time), no peepholes, no ReLU RNN. The kernels compute in float32 whatever the tensors'
dtype. σ and tanh are written with ``tl.exp`` alone — ``σ(x) = 1 / (1 + e^{−x})``,
``tanh(x) = 2 σ(2x) − 1`` — rather than ``tl.sigmoid`` (itself a ``@triton.jit`` function of
Triton's standard library, which runs interpreted only if Triton was imported with
``TRITON_INTERPRET=1``), so the kernels' mode is fixed when this module is imported.

On the CPU the kernels run through Triton's interpreter only (see :mod:`rnnkit.kernels`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.bptt import projection_bias
from rnnkit.cells.base import Cell, State

BLOCK = 1024            # elements of the (B, H) state per program


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _state_index(BLOCK: tl.constexpr, n_elements, H):
    # this program's elements of a (B, H) state: flat index, row, column, mask
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row = idx // H
    return idx, row, idx - row * H, idx < n_elements


# -- LSTM ----------------------------------------------------------------------------------

@triton.jit
def _lstm_forward_kernel(gates_ptr, c_prev_ptr, h_ptr, c_ptr, n_elements, H,
                         BLOCK: tl.constexpr):
    idx, row, col, mask = _state_index(BLOCK, n_elements, H)
    gi = row * 4 * H + col                                  # gate i's column in (B, 4H)
    i = _sigmoid(tl.load(gates_ptr + gi, mask=mask).to(tl.float32))
    f = _sigmoid(tl.load(gates_ptr + gi + H, mask=mask).to(tl.float32))
    g = _tanh(tl.load(gates_ptr + gi + 2 * H, mask=mask).to(tl.float32))
    o = _sigmoid(tl.load(gates_ptr + gi + 3 * H, mask=mask).to(tl.float32))
    c_prev = tl.load(c_prev_ptr + idx, mask=mask).to(tl.float32)
    c = f * c_prev + i * g                                  # c_t = f ⊙ c_{t-1} + i ⊙ g
    h = o * _tanh(c)                                        # h_t = o ⊙ tanh(c_t)
    tl.store(gates_ptr + gi, i, mask=mask)                  # the gates, over a
    tl.store(gates_ptr + gi + H, f, mask=mask)
    tl.store(gates_ptr + gi + 2 * H, g, mask=mask)
    tl.store(gates_ptr + gi + 3 * H, o, mask=mask)
    tl.store(c_ptr + idx, c, mask=mask)
    tl.store(h_ptr + idx, h, mask=mask)


@triton.jit
def _lstm_backward_kernel(dout_ptr, dh_next_ptr, dc_next_ptr, gates_ptr, c_prev_ptr, c_ptr,
                          da_ptr, dc_prev_ptr, n_elements, H, BLOCK: tl.constexpr):
    idx, row, col, mask = _state_index(BLOCK, n_elements, H)
    gi = row * 4 * H + col
    i = tl.load(gates_ptr + gi, mask=mask).to(tl.float32)
    f = tl.load(gates_ptr + gi + H, mask=mask).to(tl.float32)
    g = tl.load(gates_ptr + gi + 2 * H, mask=mask).to(tl.float32)
    o = tl.load(gates_ptr + gi + 3 * H, mask=mask).to(tl.float32)
    c_prev = tl.load(c_prev_ptr + idx, mask=mask).to(tl.float32)
    tc = _tanh(tl.load(c_ptr + idx, mask=mask).to(tl.float32))
    dh = (tl.load(dout_ptr + idx, mask=mask).to(tl.float32)      # output and next step
          + tl.load(dh_next_ptr + idx, mask=mask).to(tl.float32))
    dc = tl.load(dc_next_ptr + idx, mask=mask).to(tl.float32) + dh * o * (1 - tc * tc)
    tl.store(da_ptr + gi, dc * g * i * (1 - i), mask=mask)           # da_i = dc g σ'(a_i)
    tl.store(da_ptr + gi + H, dc * c_prev * f * (1 - f), mask=mask)  # da_f = dc c_{t-1} σ'(a_f)
    tl.store(da_ptr + gi + 2 * H, dc * i * (1 - g * g), mask=mask)   # da_g = dc i (1 − g²)
    tl.store(da_ptr + gi + 3 * H, dh * tc * o * (1 - o), mask=mask)  # da_o = dh tanh c σ'(a_o)
    tl.store(dc_prev_ptr + idx, dc * f, mask=mask)                   # dc_{t-1} = dc ⊙ f


# -- GRU (reset after) ---------------------------------------------------------------------

@triton.jit
def _gru_forward_kernel(xw_ptr, hw_ptr, h_prev_ptr, h_ptr, saved_ptr, n_elements, H,
                        BLOCK: tl.constexpr):
    idx, row, col, mask = _state_index(BLOCK, n_elements, H)
    gr = row * 3 * H + col                                  # gate r's column in (B, 3H)
    r = _sigmoid(tl.load(xw_ptr + gr, mask=mask).to(tl.float32)
                   + tl.load(hw_ptr + gr, mask=mask).to(tl.float32))
    z = _sigmoid(tl.load(xw_ptr + gr + H, mask=mask).to(tl.float32)
                   + tl.load(hw_ptr + gr + H, mask=mask).to(tl.float32))
    hn = tl.load(hw_ptr + gr + 2 * H, mask=mask).to(tl.float32)      # h_{t-1} W_n.T + b_hn
    n = _tanh(tl.load(xw_ptr + gr + 2 * H, mask=mask).to(tl.float32) + r * hn)
    h_prev = tl.load(h_prev_ptr + idx, mask=mask).to(tl.float32)
    tl.store(h_ptr + idx, n + z * (h_prev - n), mask=mask)           # (1 − z) n + z h_{t-1}
    gs = row * 4 * H + col                                  # [r | z | n | hn] (B, 4H)
    tl.store(saved_ptr + gs, r, mask=mask)
    tl.store(saved_ptr + gs + H, z, mask=mask)
    tl.store(saved_ptr + gs + 2 * H, n, mask=mask)
    tl.store(saved_ptr + gs + 3 * H, hn, mask=mask)


@triton.jit
def _gru_backward_kernel(dout_ptr, dh_next_ptr, saved_ptr, h_prev_ptr, dxw_ptr, dhw_ptr,
                         dh_direct_ptr, n_elements, H, BLOCK: tl.constexpr):
    idx, row, col, mask = _state_index(BLOCK, n_elements, H)
    gs = row * 4 * H + col
    r = tl.load(saved_ptr + gs, mask=mask).to(tl.float32)
    z = tl.load(saved_ptr + gs + H, mask=mask).to(tl.float32)
    n = tl.load(saved_ptr + gs + 2 * H, mask=mask).to(tl.float32)
    hn = tl.load(saved_ptr + gs + 3 * H, mask=mask).to(tl.float32)
    h_prev = tl.load(h_prev_ptr + idx, mask=mask).to(tl.float32)
    dh = (tl.load(dout_ptr + idx, mask=mask).to(tl.float32)
          + tl.load(dh_next_ptr + idx, mask=mask).to(tl.float32))
    da_n = dh * (1 - z) * (1 - n * n)                       # da_n = dh (1 − z) tanh'
    da_r = da_n * hn * r * (1 - r)                          # da_r = da_n hw_n σ'(a_r)
    da_z = dh * (h_prev - n) * z * (1 - z)                  # da_z = dh (h_{t-1} − n) σ'(a_z)
    gr = row * 3 * H + col
    tl.store(dxw_ptr + gr, da_r, mask=mask)
    tl.store(dxw_ptr + gr + H, da_z, mask=mask)
    tl.store(dxw_ptr + gr + 2 * H, da_n, mask=mask)
    tl.store(dhw_ptr + gr, da_r, mask=mask)
    tl.store(dhw_ptr + gr + H, da_z, mask=mask)
    tl.store(dhw_ptr + gr + 2 * H, da_n * r, mask=mask)     # the n block passes through r
    tl.store(dh_direct_ptr + idx, dh * z, mask=mask)        # dh_{t-1} = z ⊙ dh + dhw W


# -- tanh RNN ------------------------------------------------------------------------------

@triton.jit
def _tanh_forward_kernel(a_ptr, n_elements, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_elements
    tl.store(a_ptr + idx, _tanh(tl.load(a_ptr + idx, mask=mask).to(tl.float32)), mask=mask)


@triton.jit
def _tanh_backward_kernel(dout_ptr, dh_next_ptr, h_ptr, da_ptr, n_elements,
                          BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_elements
    dh = (tl.load(dout_ptr + idx, mask=mask).to(tl.float32)
          + tl.load(dh_next_ptr + idx, mask=mask).to(tl.float32))
    h = tl.load(h_ptr + idx, mask=mask).to(tl.float32)
    tl.store(da_ptr + idx, dh * (1 - h * h), mask=mask)     # da = dh (1 − h²)


# Whether the kernels above were defined in interpreter mode (TRITON_INTERPRET=1 at import):
# the only way they run on CPU tensors.
INTERPRETED = type(_tanh_forward_kernel).__name__ == "InterpretedFunction"


# -- one step of each cell: a product and a kernel -------------------------------------------
#
# step_forward(xw, state, new, saved, weight_hh, bias_hh) writes the new states into ``new``
# (views of the layer's buffers) and what the backward needs into ``saved``;
# step_backward(dout, dnext, state, new, saved, weight_hh, dxw, dhw) writes the gradients of
# the input projection and of the recurrent pre-activation into ``dxw``/``dhw`` and returns
# the gradients of the previous states. Every tensor is contiguous, (B, ·).

def _grid(n_elements: int) -> tuple[int]:
    return (triton.cdiv(n_elements, BLOCK),)


def lstm_step_forward(xw, state, new, saved, weight_hh, bias_hh):
    h_prev, c_prev = state
    h, c = new
    torch.addmm(xw, h_prev, weight_hh.t(), out=saved)       # a (B, 4H), in the gates' place
    _lstm_forward_kernel[_grid(h.numel())](saved, c_prev, h, c, h.numel(), h.shape[1],
                                           BLOCK=BLOCK)


def lstm_step_backward(dout, dnext, state, new, saved, weight_hh, dxw, dhw):
    dh_next, dc_next = dnext
    dc_prev = torch.empty_like(dc_next)
    _lstm_backward_kernel[_grid(dout.numel())](dout, dh_next, dc_next, saved, state[1], new[1],
                                               dxw, dc_prev, dout.numel(), dout.shape[1],
                                               BLOCK=BLOCK)
    return dxw @ weight_hh, dc_prev                         # dh_{t-1} = da W


def gru_step_forward(xw, state, new, saved, weight_hh, bias_hh):
    (h_prev,), (h,) = state, new
    if bias_hh is None:
        hw = h_prev @ weight_hh.t()                         # (B, 3H)
    else:
        hw = torch.addmm(bias_hh, h_prev, weight_hh.t())
    _gru_forward_kernel[_grid(h.numel())](xw, hw, h_prev, h, saved, h.numel(), h.shape[1],
                                          BLOCK=BLOCK)


def gru_step_backward(dout, dnext, state, new, saved, weight_hh, dxw, dhw):
    (dh_next,), (h_prev,) = dnext, state
    dh_direct = torch.empty_like(dh_next)
    _gru_backward_kernel[_grid(dout.numel())](dout, dh_next, saved, h_prev, dxw, dhw,
                                              dh_direct, dout.numel(), dout.shape[1],
                                              BLOCK=BLOCK)
    return (torch.addmm(dh_direct, dhw, weight_hh),)        # z ⊙ dh + dhw W


def tanh_step_forward(xw, state, new, saved, weight_hh, bias_hh):
    (h_prev,), (h,) = state, new
    torch.addmm(xw, h_prev, weight_hh.t(), out=h)           # a (B, H), in h's place
    _tanh_forward_kernel[_grid(h.numel())](h, h.numel(), BLOCK=BLOCK)


def tanh_step_backward(dout, dnext, state, new, saved, weight_hh, dxw, dhw):
    (dh_next,), (h,) = dnext, new
    _tanh_backward_kernel[_grid(dout.numel())](dout, dh_next, h, dxw, dout.numel(),
                                               BLOCK=BLOCK)
    return (dxw @ weight_hh,)                               # dh_{t-1} = da W


class Steps(NamedTuple):
    """What the layer driver needs to know about one cell's fused step."""

    gates: int              # G: xw and dxw are (B, G*H)
    num_states: int         # 1 for (h,), 2 for (h, c)
    saved: int              # width of what a step saves, in units of H
    fold_bias_hh: bool      # bias_hh joins the input projection (else the step adds it)
    step_forward: Callable
    step_backward: Callable


# Keyed by the cells' ``native_mode``: exactly the cells whose math is torch.nn's.
STEPS = {
    "LSTM": Steps(4, 2, 4, True, lstm_step_forward, lstm_step_backward),
    "GRU": Steps(3, 1, 4, False, gru_step_forward, gru_step_backward),
    "RNN_TANH": Steps(1, 1, 0, True, tanh_step_forward, tanh_step_backward),
}


def supports(cell: Cell) -> bool:
    """Whether a fused step computes ``cell`` (torch.nn's LSTM, GRU or tanh RNN)."""
    return getattr(cell, "native_mode", None) in STEPS


# -- the layer: a loop over time, forward and backward ---------------------------------------

def _check_device(x: Tensor) -> None:
    if x.device.type == "cpu" and not INTERPRETED:
        raise ValueError("triton kernels: CPU tensors run only through Triton's interpreter; "
                         "set TRITON_INTERPRET=1 before rnnkit.kernels.triton_steps is imported "
                         "(or use a CUDA device)")


class TritonRecurrentFunction(torch.autograd.Function):
    """One layer, one direction, dense batch: x (T, B, I) -> out (T, B, H), final states."""

    @staticmethod
    def forward(ctx, mode: str, x: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                bias_ih: Tensor | None, bias_hh: Tensor | None, *state0: Tensor):
        steps = STEPS[mode]
        T, B, I = x.shape
        H = weight_hh.shape[1]
        bias = projection_bias(steps, bias_ih, bias_hh)   # steps: a cell's fold_bias_hh
        x2 = x.reshape(T * B, I)
        xw = (x2 @ weight_ih.t() if bias is None
              else torch.addmm(bias, x2, weight_ih.t())).view(T, B, -1)   # (T, B, G*H)
        w_hh = weight_hh.contiguous()
        b_hh = None if steps.fold_bias_hh else bias_hh
        out = x.new_empty(T, B, H)                          # h_t of every step
        more = [x.new_empty(T, B, H) for _ in range(steps.num_states - 1)]  # c_t of every step
        saved = x.new_empty(T, B, steps.saved * H)
        state = tuple(s.contiguous() for s in state0)
        for t in range(T):
            new = (out[t], *(m[t] for m in more))
            steps.step_forward(xw[t], state, new, saved[t], w_hh, b_hh)
            state = new
        ctx.mode, ctx.more, ctx.step_saved = mode, more, saved
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        ctx.save_for_backward(x, weight_ih, weight_hh, out, *state0)
        # Fresh tensors for the final states, not views of the buffers kept for the backward.
        return (out, out[-1].clone(), *(m[-1].clone() for m in more))

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor, *dfinal: Tensor):
        x, weight_ih, weight_hh, out, *state0 = ctx.saved_tensors
        steps, more, saved = STEPS[ctx.mode], ctx.more, ctx.step_saved
        T, B, H = out.shape
        state0 = tuple(s.contiguous() for s in state0)
        w_hh = weight_hh.contiguous()
        dout = dout.contiguous()
        dxw = x.new_empty(T, B, steps.gates * H)            # dL/d(input projection)
        dhw = dxw if steps.fold_bias_hh else torch.empty_like(dxw)   # dL/d(h W.T + b_hh)
        dstate = tuple(d.contiguous() for d in dfinal)
        for t in range(T - 1, -1, -1):
            state = state0 if t == 0 else (out[t - 1], *(m[t - 1] for m in more))
            new = (out[t], *(m[t] for m in more))
            dstate = steps.step_backward(dout[t], dstate, state, new, saved[t], w_hh,
                                         dxw[t], dhw[t])
        dxw, dhw = dxw.view(T * B, -1), dhw.view(T * B, -1)             # (T*B, G*H)
        h_prev = torch.cat([state0[0][None], out[:-1]]).view(T * B, H)   # h_{t-1}, all t
        dx = (dxw @ weight_ih).view(T, B, -1) if ctx.needs_input_grad[1] else None
        dweight_ih = dxw.t() @ x.reshape(T * B, -1)         # (G*H, I), one product
        dweight_hh = dhw.t() @ h_prev                       # (G*H, H), one product
        dbias_ih = dxw.sum(0) if ctx.has_bias[0] else None
        dbias_hh = dhw.sum(0) if ctx.has_bias[1] else None
        return (None, dx, dweight_ih, dweight_hh, dbias_ih, dbias_hh, *dstate)


def triton_layer(mode: str, x: Tensor, state0: State, weight_ih: Tensor, weight_hh: Tensor,
                 bias_ih: Tensor | None = None,
                 bias_hh: Tensor | None = None) -> tuple[Tensor, State]:
    """One recurrent layer over a dense, time-major batch with the fused Triton steps.

    Args:
        mode: "LSTM", "GRU" or "RNN_TANH" (a cell's ``native_mode``).
        x: (T, B, I); state0: (h0,) or (h0, c0), (B, H) each; the weights as in
            ``torch.nn`` — weight_ih (G*H, I), weight_hh (G*H, H), biases (G*H,) or None.

    Returns:
        out (T, B, H) and the final states, (B, H) each — those of the ``torch.nn`` module
        with the same weights.
    """
    if mode not in STEPS:
        raise ValueError(f"mode: expected one of {sorted(STEPS)}, got {mode!r}")
    if x.dim() != 3 or x.shape[0] == 0:
        raise ValueError(f"x: expected (T, B, I) with T ≥ 1, got shape {tuple(x.shape)}")
    if len(state0) != STEPS[mode].num_states:
        raise ValueError(f"state0: {mode} has {STEPS[mode].num_states} states, "
                         f"got {len(state0)}")
    _check_device(x)
    out, *final = TritonRecurrentFunction.apply(mode, x, weight_ih, weight_hh, bias_ih,
                                                bias_hh, *state0)
    return out, tuple(final)


def recurrent_triton(cell: Cell, x: Tensor, batch_sizes: list[int], state0: State,
                     weight_ih: Tensor, weight_hh: Tensor | None, bias_ih: Tensor | None,
                     bias_hh: Tensor | None, extra: tuple[Tensor, ...] = (),
                     reverse: bool = False) -> tuple[Tensor, State]:
    """:func:`rnnkit.autograd.recurrent_bptt`'s signature on the fused Triton steps: one
    layer-direction over packed rows (N, I) — with equal lengths only (``batch_sizes`` all
    the same) in this version.

    Under autocast the layer runs in float32, as the hand engine does.
    """
    if not supports(cell) or extra:
        raise ValueError(f"triton kernels: no fused step for the cell {cell!r} (LSTM without "
                         f"peepholes, GRU reset after, tanh RNN only)")
    B = batch_sizes[0]
    if any(n != B for n in batch_sizes):
        raise ValueError("triton kernels: dense batches only (all sequences of one length) in "
                         "this version; use the 'bptt' or 'native' backend for variable lengths")
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return recurrent_triton(cell, x.float(), batch_sizes,
                                    tuple(s.float() for s in state0), weight_ih, weight_hh,
                                    bias_ih, bias_hh, extra, reverse)
    xs = x.reshape(len(batch_sizes), B, -1)                  # (T, B, I)
    if reverse:
        xs = xs.flip(0)
    out, final = triton_layer(cell.native_mode, xs, state0, weight_ih, weight_hh, bias_ih,
                              bias_hh)
    if reverse:
        out = out.flip(0)
    return out.reshape(x.shape[0], -1), final

"""The compiled loops (rnnkit.compiled) against the Python engine (rnnkit.bptt): outputs,
final states and every gradient, for LSTM, GRU and Elman RNNs, with variable lengths, a
carried initial state and the reverse direction; gradcheck in float64; the layer through
the public API. Skipped, with the reason, where the extension cannot build."""

from __future__ import annotations

import pytest
import torch
import rnnkit

from rnnkit import compiled
from rnnkit.autograd import recurrent_python as recurrent_bptt  # the Python engine: the reference
from rnnkit.bptt import input_projection, unroll_backward, unroll_forward
from rnnkit.cells import make_cell
from rnnkit.cells.base import engine_params
from rnnkit.cells.lstm import LSTMCell


@pytest.fixture(scope="module")
def module():
    """The compiled module. Skips where it cannot exist (no C++ compiler, or
    RNNKIT_COMPILED=0); fails where it should have built and did not — a build error must
    not pass CI as a row of skips."""
    import os
    import shutil

    m = compiled.load()
    if m is None:
        reason = compiled.unavailable_reason() or "compiled extension unavailable"
        compiler = os.environ.get("CXX") or "c++"
        if os.environ.get("RNNKIT_COMPILED") == "0" or shutil.which(compiler) is None:
            pytest.skip(reason)
        pytest.fail(f"a C++ compiler is here ({shutil.which(compiler)}) but {reason}")
    return m


TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
# every registered cell (registry names; "rnn" is "rnn_tanh") and zoneout on the LSTM, each
# where a compiled loop computes it
ALL = [name for name in rnnkit.cell_names() if name != "rnn"] + ["lstm+zoneout"]
LENGTHS = {"full": [5, 5, 5, 5], "variable": [7, 5, 5, 2, 1]}


def make(name: str):
    """A cell by registry name; "<name>+zoneout": zoneout 0.25 on it, in training mode."""
    base, _, noise = name.partition("+")
    return make_cell(base, zoneout=0.25).for_mode(True) if noise else make_cell(base)


CELLS = tuple(name for name in ALL if compiled.kernel_of(make(name)) is not None)


def problem(name, lengths, dtype, H=6, I=5, seed=0):
    """A packed batch (examples sorted longest first), every parameter of the cell (a list
    in ``param_shapes`` order) and an initial state."""
    g = torch.Generator().manual_seed(seed)
    cell = make(name)
    batch_sizes = [sum(1 for n in lengths if n > t) for t in range(max(lengths))]
    N, B = sum(batch_sizes), batch_sizes[0]

    def rand(*shape):
        return (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1).requires_grad_()

    x = rand(N, I)
    params = [rand(*shape) for shape in cell.param_shapes(I, H).values()]
    state0 = tuple(rand(B, H) for _ in range(cell.num_states))      # a carried state
    return cell, x, batch_sizes, params, state0


def args(cell, params):
    """(weight_ih, weight_hh, bias_ih, bias_hh, extra) of the engines from the list."""
    names = cell.param_shapes(1, params[0].shape[0] // cell.gates)
    return engine_params(dict(zip(names, params)))


def call(engine, cell, x, batch_sizes, state0, params, reverse=False):
    """One layer call of ``engine`` (the Python engine or the compiled path); the
    random masks of a zoneout cell drawn alike for both (the same seed before each)."""
    torch.manual_seed(7)
    return engine(cell, x, batch_sizes, state0, *args(cell, params), reverse)


def run(engine, cell, x, batch_sizes, params, state0, reverse):
    """Outputs, final states and gradients of a random loss over out and final states."""
    out, final = call(engine, cell, x, batch_sizes, state0, params, reverse)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for s in final:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    grads = torch.autograd.grad(loss, [x, *params, *state0])
    return [out.detach(), *(s.detach() for s in final), *grads]


def names_of(cell, state0):
    """What run() returns, by name, for the failure messages."""
    return ["out", *(f"final{k}" for k in range(cell.num_states)), "dx",
            *(f"d{name}" for name in cell.param_shapes(1, 1)),
            *(f"dstate0_{k}" for k in range(len(state0)))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("name", CELLS)
def test_compiled_layer_matches_python_engine(module, name, lengths, reverse, dtype):
    cell, x, batch_sizes, params, state0 = problem(name, LENGTHS[lengths], dtype)
    want = run(recurrent_bptt, cell, x, batch_sizes, params, state0, reverse)
    got = run(compiled.recurrent_compiled, cell, x, batch_sizes, params, state0, reverse)
    for what, a, b in zip(names_of(cell, state0), got, want):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{what}: {m}")


def compare_unrolls(cell, x, batch_sizes, params, state0, reverse):
    """rnnkit.bptt's loops and the compiled ones on the same float64 problem: outputs, final
    states, every gradient of the backward (dweight_ih too), the same random draws (zoneout:
    as many, no more). Returns both forwards' caches, (Python engine's, compiled)."""
    w_ih, w_hh, b_ih, b_hh, extra = args(cell, [p.detach() for p in params])
    state0 = tuple(s.detach() for s in state0)
    xw = input_projection(cell, x.detach(), w_ih, b_ih, b_hh)
    torch.manual_seed(7)
    out, final, caches = unroll_forward(cell, xw, batch_sizes, state0, w_hh, b_hh, extra,
                                        reverse=reverse)
    after = torch.rand(3)                                  # the generator after the draws
    torch.manual_seed(7)
    c_out, c_final, c_caches = compiled.unroll_forward(cell, xw, batch_sizes, state0, w_hh,
                                                       b_hh, extra, reverse=reverse)
    assert torch.equal(torch.rand(3), after)               # as many draws, no more
    torch.testing.assert_close(c_out, out, **TOL[torch.float64])
    for a, b in zip(c_final, final):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    dout = torch.randn_like(out)
    dfinal = tuple(torch.randn_like(s) for s in final)
    dxw, dhw, dstate0, dweight_hh, dextra = unroll_backward(cell, dout, dfinal, caches,
                                                            batch_sizes, w_hh, extra,
                                                            reverse=reverse)
    c = compiled.unroll_backward(cell, dout, dfinal, c_caches, batch_sizes, w_hh, extra,
                                 reverse=reverse, x=x.detach())
    assert len(c.dextra) == len(dextra) == len(extra)
    for a, b in [(c.dxw, dxw), (c.dhw, dhw), *zip(c.dstate0, dstate0),
                 (c.dweight_hh, dweight_hh), *zip(c.dextra, dextra),
                 (c.dweight_ih, dxw.t() @ x.detach())]:
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    return caches, c_caches


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", CELLS)
def test_compiled_unroll_matches_bptt_unroll(module, name, reverse):
    """The loops themselves against rnnkit.bptt's, caches to gradients, in float64."""
    compare_unrolls(*problem(name, LENGTHS["variable"], torch.float64, H=9, seed=3), reverse)


@pytest.mark.parametrize(
    "name", [n for n in CELLS if len(make(n).param_shapes(1, 1).get("weight_hh", ())) == 2])
def test_a_step_weight_of_the_wrong_shape_is_refused_by_name(module, name):
    """Every loop with a step product checks xw and weight_hh against H before it reads
    them: a (G H, H + 1) weight is a RuntimeError naming the function and both shapes,
    not a read past the weight's end."""
    cell, x, batch_sizes, params, state0 = problem(name, LENGTHS["variable"], torch.float64)
    weight_ih, weight_hh, bias_ih, bias_hh, extra = args(cell, params)
    xw = input_projection(cell, x.detach(), weight_ih, bias_ih, bias_hh)
    wide = torch.zeros(weight_hh.shape[0], weight_hh.shape[1] + 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"_forward: expected xw .* and weight_hh .* got"):
        compiled.unroll_forward(cell, xw, batch_sizes, tuple(s.detach() for s in state0),
                                wide, bias_hh, [e.detach() for e in extra])


@pytest.mark.parametrize("name", CELLS)
def test_aten_products_match_onednn_products(module, name):
    """float32 products run through oneDNN by default; at::mm (use_onednn(False)), the path
    of float64 and of a torch without oneDNN, gives the same layer."""
    cell, x, batch_sizes, params, state0 = problem(name, LENGTHS["variable"], torch.float32)
    want = run(recurrent_bptt, cell, x, batch_sizes, params, state0, True)
    module.use_onednn(False)
    try:
        assert module.gemm_backend() == "aten"
        got = run(compiled.recurrent_compiled, cell, x, batch_sizes, params, state0, True)
    finally:
        module.use_onednn(True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_extreme_preactivations_saturate_like_torch(module):
    """The loops' own exp/sigmoid/tanh at ±large inputs: no inf or nan, torch's limits."""
    cell, x, batch_sizes, params, state0 = problem("lstm", LENGTHS["full"], torch.float32)
    params = [p.detach() * 500 for p in params]
    x, state0 = x.detach() * 500, tuple(s.detach() for s in state0)
    want, _ = call(recurrent_bptt, cell, x, batch_sizes, state0, params)
    got, _ = call(compiled.recurrent_compiled, cell, x, batch_sizes, state0, params)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_a_users_own_cell_falls_back_to_python_engine(module):
    """A subclass (a user's own step) is not the cell the loops compute: no kernel takes it,
    and the compiled path's entry runs it on the Python engine."""
    class MyLSTM(LSTMCell):
        def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
            return super().step_forward(xw * 0.5, state, weight_hh, bias_hh, *extra)

    cell = MyLSTM()
    assert compiled.kernel_of(cell) is None and not compiled.supports(cell)
    _, x, batch_sizes, params, state0 = problem("lstm", LENGTHS["variable"], torch.float64)
    want, _ = call(recurrent_bptt, cell, x, batch_sizes, state0, params)
    got, _ = call(compiled.recurrent_compiled, cell, x, batch_sizes, state0, params)
    torch.testing.assert_close(got, want)


def test_turned_off_by_environment(monkeypatch):
    monkeypatch.setenv("RNNKIT_COMPILED", "0")
    assert compiled.load() is None
    assert "RNNKIT_COMPILED=0" in compiled.unavailable_reason()


def test_bias_gradients_are_separate_tensors(module):
    """The LSTM's two bias gradients are equal (dxw is dhw) but must not share storage: an
    in-place change of one .grad (clipping) would change the other."""
    cell, x, batch_sizes, params, state0 = problem("lstm", LENGTHS["full"], torch.float32)
    out, _ = call(compiled.recurrent_compiled, cell, x, batch_sizes, state0, params)
    out.sum().backward()
    assert params[2].grad.data_ptr() != params[3].grad.data_ptr()
    torch.testing.assert_close(params[2].grad, params[3].grad)


def test_failed_build_gives_none_and_reason(monkeypatch, tmp_path):
    """A build that cannot succeed (here an option the compiler refuses) is no error: load()
    gives None and says why, and the layer runs on the Python engine."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("RNNKIT_COMPILED", raising=False)
    monkeypatch.setattr(compiled, "CFLAGS", ["-fno-such-option-for-rnnkit"])
    monkeypatch.setattr(compiled, "_module", None)
    monkeypatch.setattr(compiled, "_tried", False)
    monkeypatch.setattr(compiled, "_reason", None)
    assert compiled.load() is None
    assert "could not be built" in compiled.unavailable_reason()
    cell, x, batch_sizes, params, state0 = problem("gru", LENGTHS["variable"], torch.float64)
    want, _ = call(recurrent_bptt, cell, x, batch_sizes, state0, params)
    got, _ = call(compiled.recurrent_compiled, cell, x, batch_sizes, state0, params)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CELLS)
def test_large_layer_over_two_threads_matches(module, name, dtype):
    """H = 512: rows split over the intra-op threads (at::parallel_for), and in float32 the
    step weight past the micro-kernel's size, so the packed oneDNN product — same results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cell, x, batch_sizes, params, state0 = problem(name, [3] * 40 + [2] * 24, dtype,
                                                       H=512, I=8)
        params = [p.detach().mul(0.1).requires_grad_() for p in params]   # U(-0.1, 0.1)
        want = run(recurrent_bptt, cell, x, batch_sizes, params, state0, True)
        got = run(compiled.recurrent_compiled, cell, x, batch_sizes, params, state0, True)
    finally:
        torch.set_num_threads(threads)
    # float32 sums over 512 terms in another order (oneDNN's, not MKL's): looser
    tol = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else TOL[dtype]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("name", CELLS)
def test_deep_bidirectional_layer_with_lengths_matches(module, name):
    """Through the public layer: 2 layers, both directions, padded input with lengths and a
    given initial state — the compiled loops in place of the engine, every gradient equal."""
    import rnnkit

    class CompiledStack(rnnkit.RecurrentStack):
        def _stack(self, engine, x, batch_sizes, state0):
            return super()._stack(compiled.recurrent_compiled, x, batch_sizes, state0)

    torch.manual_seed(0)
    base, _, noise = name.partition("+")
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, backend="bptt", cell=base,
              cell_options={"zoneout": 0.25} if noise else None)
    ref, fast = rnnkit.RecurrentStack(5, 7, **kw), CompiledStack(5, 7, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 5)
    lengths = torch.tensor([3, 6, 1, 4])                  # unsorted, as a user gives them
    hx = tuple(torch.randn(4, 4, 7) for _ in range(make(name).num_states))
    grads = []
    for model in (ref, fast):
        torch.manual_seed(7)                              # zoneout's masks alike
        xi = x.clone().requires_grad_()
        h0 = tuple(h.clone().requires_grad_() for h in hx)
        out, state = model(xi, h0 if len(h0) > 1 else h0[0], lengths=lengths)
        states = state if isinstance(state, tuple) else (state,)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        loss = loss + sum((s * s).sum() for s in states)
        loss.backward()
        grads.append([out.detach(), *(s.detach() for s in states), xi.grad,
                      *(h.grad for h in h0), *(p.grad for p in model.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", CELLS)
def test_gradcheck_float64(module, name, reverse):
    """The compiled backward against finite differences of the compiled forward."""
    cell, x, batch_sizes, params, state0 = problem(name, [3, 2, 2, 1], torch.float64, H=3, I=2)

    k = len(params)

    def layer(x, *rest):
        out, final = call(compiled.recurrent_compiled, cell, x, batch_sizes, rest[k:],
                          rest[:k], reverse)
        return (out, *final)

    assert torch.autograd.gradcheck(layer, (x, *params, *state0))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", CELLS)
def test_inference_forward_without_caches_matches(module, name, reverse):
    """Under no_grad the loops keep no caches (one step's scratch): same outputs, states."""
    cell, x, batch_sizes, params, state0 = problem(name, LENGTHS["variable"], torch.float32)
    with torch.no_grad():
        want, want_final = call(recurrent_bptt, cell, x, batch_sizes, state0, params, reverse)
        got, got_final = call(compiled.recurrent_compiled, cell, x, batch_sizes, state0,
                              params, reverse)
    for a, b in zip((got, *got_final), (want, *want_final)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_the_outputs_may_be_changed_in_place_before_the_backward():
    """The compiled Elman loop keeps its own copy of the outputs it reads backward."""
    for cell in ("rnn_tanh", "gru", "lstm"):
        layer = rnnkit.RecurrentStack(4, 5, cell=cell, backend="bptt")
        out, _ = layer(torch.randn(6, 1, 4))
        out.mul_(2)
        out.sum().backward()                                     # no error
        assert layer.weight_hh_l0.grad is not None


def test_auto_keeps_pytorchs_kernel_where_the_compiled_loop_does_not_run():
    layer = rnnkit.RecurrentStack(4, 5, cell="gru").to(torch.bfloat16)
    assert layer.resolved_backend() == "native"


# registered cells that may run on the Python engine only (none today); a new cell joins
# the compiled loops with a file pair rnnkit/compiled/<family>.cpp + <family>.py
PYTHON_ONLY: set[str] = set()


def test_every_registered_cell_has_a_compiled_loop():
    fast, slow = compiled.compiled_cells()
    assert set(slow) <= PYTHON_ONLY, f"no compiled loop for {sorted(set(slow) - PYTHON_ONLY)}"
    assert compiled.kernel_of(make("lstm+zoneout")) is not None
    assert compiled.kernel_of(make_cell("lstm_peephole", zoneout=0.1)) is not None


def test_a_registered_kernel_runs_a_users_cell(module, monkeypatch):
    """compiled.register: a user's kernel for a user's cell is asked first, takes the layer
    call (forward with caches, backward with every gradient), and equals the Python engine.
    The kernel here runs rnnkit.bptt's loops itself, standing in for a user's C++."""
    from rnnkit.compiled.kernel import Grads, Kernel
    from rnnkit import bptt

    class MyLSTM(LSTMCell):
        pass

    calls = []

    class MyKernel(Kernel):
        def accepts(self, cell):
            return type(cell) is MyLSTM

        def forward(self, m, cell, xw, batch_sizes, state0, weight_hh, bias_hh, extra,
                    reverse, keep):
            calls.append("forward")
            out, final, caches = bptt.unroll_forward(cell, xw, batch_sizes, state0, weight_hh,
                                                     bias_hh, extra, reverse)
            return out, final, (caches,) if keep else ()

        def backward(self, m, cell, dout, dfinal, caches, batch_sizes, weight_hh, extra,
                     reverse, x):
            calls.append("backward")
            steps = caches[0]                           # the forward's per-step caches
            dxw, dhw, dstate0, dweight_hh, dextra = bptt.unroll_backward(
                cell, dout, dfinal, steps, batch_sizes, weight_hh, extra, reverse)
            return Grads(dxw, dhw, dstate0, dweight_hh, dextra, m.linear(dxw.t(), x.t()))

    monkeypatch.setattr(compiled, "KERNELS", list(compiled.KERNELS))
    with pytest.raises(TypeError, match="Kernel"):
        compiled.register(object())
    compiled.register(MyKernel())
    _, x, batch_sizes, params, state0 = problem("lstm", LENGTHS["variable"], torch.float64)
    want = run(recurrent_bptt, LSTMCell(), x, batch_sizes, params, state0, True)
    got = run(rnnkit.autograd.recurrent_bptt, MyLSTM(), x, batch_sizes, params, state0, True)
    assert calls == ["forward", "backward"]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_a_build_killed_midway_leaves_no_lock_that_blocks_the_next(module):
    """PyTorch's build lock is a plain file that a killed build (Ctrl-C during the first
    build) leaves behind; the next load must not wait for it forever."""
    import subprocess
    import sys

    stale = compiled.cache_dir() / "lock"
    stale.write_text("")
    try:
        done = subprocess.run([sys.executable, "-c", "from rnnkit import compiled; "
                               "print(compiled.load() is not None)"],
                              capture_output=True, text=True, timeout=120)
    finally:
        stale.unlink(missing_ok=True)
    assert done.stdout.strip() == "True", done.stderr


def test_large_buffers_are_reused_only_once_free(module):
    """Freed large buffers (>= 4 MiB) are kept for the next call: a kept output is never
    handed out again while alive, a second call gives the same numbers, and
    release_buffers() gives the kept memory back."""
    layer = rnnkit.RecurrentStack(64, 512, cell="lstm", backend="bptt")
    x = torch.randn(40, 64, 64)                          # out (40*64, 512): 5 MiB
    first, _ = layer(x)
    first.sum().backward()
    kept = first.detach().clone()
    held = module.buffers_held()
    assert held > 0                                      # the backward's buffers, freed
    second, _ = layer(x)                                 # may take those blocks
    assert second.data_ptr() != first.data_ptr()         # `first` is alive: not reused
    torch.testing.assert_close(first.detach(), kept)     # and not written over
    torch.testing.assert_close(second.detach(), kept)
    del first, second
    assert module.release_buffers() > 0
    assert module.buffers_held() == 0


def test_caches_are_saved_tensors(module):
    """The loops' caches go through save_for_backward: saved-tensor hooks see them (so
    checkpointing and offloading work), and autograd frees them after the backward."""
    cell, x, batch_sizes, params, state0 = problem("lstm", LENGTHS["variable"], torch.float32)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t,
                                                  lambda t: t):
        out, _ = call(compiled.recurrent_compiled, cell, x, batch_sizes, state0, params)
    # x, weight_ih, weight_hh and the LSTM's four caches (gates, tanh c, h_prev, c_prev)
    assert len(packed) == 7
    assert any(t.shape == (sum(batch_sizes), 4 * 6) for t in packed)       # the gates


@pytest.mark.parametrize("name", ["gru", "layernorm_gru", "min_gru"])
def test_strided_parameters_match(module, name):
    """Parameters given as strided views (a user calling the engine on slices): oneDNN
    reads a bias as contiguous memory, so the loops must hand it one."""
    cell, x, batch_sizes, params, state0 = problem(name, LENGTHS["variable"], torch.float32)
    strided = [torch.stack([p.detach(), p.detach()], -1)[..., 0].requires_grad_()
               for p in params]                          # same values, stride 2
    assert not strided[-1].is_contiguous()
    want = run(recurrent_bptt, cell, x, batch_sizes, params, state0, False)
    got = run(compiled.recurrent_compiled, cell, x, batch_sizes, strided, state0, False)
    for what, a, b in zip(names_of(cell, state0), got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float32], msg=lambda m: f"{what}: {m}")


def test_long_float32_sums_keep_their_digits(module):
    """A vector parameter's gradient sums over every packed row: over 64,000 rows in
    float32 the compiled loops stay as close to float64 as the Python engine does."""
    torch.manual_seed(0)
    cell = make_cell("lstm_peephole")
    T, B, H, I = 2000, 32, 16, 4
    params = [(torch.rand(*s) * 0.4 - 0.2) for s in cell.param_shapes(I, H).values()]
    x = torch.randn(T * B, I)
    state0 = (torch.zeros(B, H), torch.zeros(B, H))

    def grad_peephole(engine, dtype):
        ps = [p.to(dtype, copy=True).requires_grad_() for p in params]
        out, _ = engine(cell, x.to(dtype), [B] * T, tuple(s.to(dtype) for s in state0),
                        *args(cell, ps))
        out.sum().backward()
        return ps[-1].grad.double()

    exact = grad_peephole(recurrent_bptt, torch.float64)
    python = (grad_peephole(recurrent_bptt, torch.float32) - exact).norm() / exact.norm()
    fast = (grad_peephole(compiled.recurrent_compiled, torch.float32) - exact).norm() / exact.norm()
    assert fast <= 3 * python + 1e-7, (fast, python)

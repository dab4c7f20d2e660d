"""Shared helpers for rnnkit's tests: every registered cell, their torch.nn twins, random
inputs, and comparisons against a reference.

Test modules import the plain helpers with ``from conftest import …`` (pytest puts this
folder on ``sys.path`` when it loads this file); the autouse fixture seeds every test.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import rnnkit
from rnnkit.cells import torch_twin
from rnnkit.cells.base import engine_params

# Every cell of the registry once, as (registered name, options) — ("rnn" with its default
# options is "rnn_tanh", so it is not repeated). New cells join every test by registering.
def pytest_sessionstart(session):
    """Build the compiled loops of :mod:`rnnkit.compiled` (once per machine, cached) before
    any test runs, so that no test's captured output holds the one-line build notice."""
    from rnnkit import compiled

    compiled.load()


def _registered_variants() -> list[tuple[str, dict]]:
    seen, variants = set(), []
    for name in rnnkit.cell_names():
        cell = rnnkit.make_cell(name)
        if cell.name not in seen:
            seen.add(cell.name)
            variants.append((name, {}))
    return variants


VARIANTS = _registered_variants()
VARIANT_IDS = [name for name, _ in VARIANTS]
# The variants that torch.nn computes too (and that the "native" backend accepts).
STANDARD_IDS = [name for name, options in VARIANTS
                if torch_twin(rnnkit.make_cell(name, **options)) is not None]
STANDARD = [v for v, name in zip(VARIANTS, VARIANT_IDS) if name in STANDARD_IDS]
NONSTANDARD_IDS = [name for name in VARIANT_IDS if name not in STANDARD_IDS]
NONSTANDARD = [v for v, name in zip(VARIANTS, VARIANT_IDS) if name not in STANDARD_IDS]

each_variant = pytest.mark.parametrize(("kind", "options"), VARIANTS, ids=VARIANT_IDS)
each_standard_variant = pytest.mark.parametrize(("kind", "options"), STANDARD, ids=STANDARD_IDS)
each_nonstandard_variant = pytest.mark.parametrize(("kind", "options"), NONSTANDARD,
                                                   ids=NONSTANDARD_IDS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def is_standard(kind: str, options: dict) -> bool:
    return (kind, options) in STANDARD


def num_states(kind: str, options: dict | None = None) -> int:
    """How many state tensors the cell carries (2 for an LSTM's (h, c))."""
    return rnnkit.make_cell(kind, **(options or {})).num_states


def backends_for(kind: str, options: dict) -> list[str]:
    """The explicit backends a variant runs on: the engine, its autograd, the kernel, and
    the parallel scan for a cell whose state is linear in the previous one."""
    from rnnkit.scan import supports

    return ["bptt", "autograd"] + (["native"] if is_standard(kind, options) else []) + \
        (["scan"] if supports(rnnkit.make_cell(kind, **options)) else [])


def make_layer(kind: str, options: dict, input_size: int, hidden_size: int, **kwargs):
    """The rnnkit stack of a registered cell; ``kwargs`` as the torch.nn constructor's."""
    return rnnkit.RecurrentStack(input_size, hidden_size, cell=kind, cell_options=options,
                                 **kwargs)


def make_torch_twin(kind: str, options: dict, input_size: int, hidden_size: int, **kwargs):
    """The ``torch.nn`` module that computes a standard variant."""
    cls, twin_kwargs = torch_twin(rnnkit.make_cell(kind, **options))
    return cls(input_size, hidden_size, **twin_kwargs, **kwargs)


def cell_params(cell, input_size: int, hidden_size: int, *, bias: bool = True,
                dtype=torch.float64, scale: float = 0.5) -> dict:
    """Random parameters of one layer-direction, the shapes the cell declares (as in
    torch.nn for the standard cells), requiring grad: ``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh`` (None where the cell or ``bias`` has none) and ``extra``."""
    shapes = cell.param_shapes(input_size, hidden_size, bias)
    params = {name: (scale * torch.randn(shape, dtype=dtype)).requires_grad_()
              for name, shape in shapes.items()}
    w_ih, w_hh, b_ih, b_hh, extra = engine_params(params)
    return {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh,
            "extra": extra}


def random_state(cell, batch: int, hidden_size: int, dtype=torch.float64) -> tuple:
    """Random initial states ``(h,)`` or ``(h, c)``, (batch, H) each, requiring grad."""
    return tuple((0.5 * torch.randn(batch, hidden_size, dtype=dtype)).requires_grad_()
                 for _ in range(cell.num_states))


def flat_tensors(*values) -> list[torch.Tensor]:
    """Every tensor in nested tuples/lists/PackedSequences, in order (None skipped)."""
    out = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, PackedSequence):
            out.append(v.data)
        elif isinstance(v, (tuple, list)):
            out.extend(flat_tensors(*v))
        else:
            out.append(v)
    return out


def weighted_sum(outputs, seed: int = 1234) -> torch.Tensor:
    """A scalar loss ``Σ_k <out_k, g_k>`` with fixed random upstream gradients g_k.

    The g_k come from their own generator, so two runs of the same shapes get the same
    upstream gradients whatever else used the global random state.
    """
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for out in flat_tensors(outputs):
        g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
        total = total + (out * g).sum()
    return total


def grads_of(loss: torch.Tensor, tensors) -> list[torch.Tensor]:
    """d loss / d tensor for each tensor (zeros for one the loss does not reach)."""
    tensors = list(tensors)
    found = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, found)]


def assert_all_close(actual, expected, names=None, **tol) -> None:
    """Element-wise ``assert_close`` of two equally long tensor lists, naming the culprit."""
    actual, expected = flat_tensors(actual), flat_tensors(expected)
    assert len(actual) == len(expected)
    names = names or [str(k) for k in range(len(actual))]
    for name, a, e in zip(names, actual, expected):
        torch.testing.assert_close(a, e, msg=lambda m, name=name: f"{name}: {m}", **tol)


def copy_parameters(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Load ``source``'s state_dict into ``target`` (strict: same names and shapes)."""
    target.load_state_dict(source.state_dict(), strict=True)


def step_backward_and_autograd(cell, n: int = 3, hidden_size: int = 4):
    """One step of ``cell`` in float64 on random inputs: the hand gradients and autograd's.

    The hand side is ``prepare_backward`` + ``step_backward`` for (d state_prev, dxw) and
    ``param_backward`` for weight_hh (and the extra parameters); ``bias_hh`` (only passed
    when the cell cannot fold it into the input projection) gets ``dhw.sum(0)``.

    The recurrent weight has the shape the cell declares (a matrix, a vector, or none:
    then neither it nor ``bias_hh`` is in the lists).

    Returns ``(hand, reference, names)``, three equally long lists.
    """
    H = hidden_size
    p = cell_params(cell, 1, H)                            # weight_ih unused: xw is given
    xw = torch.randn(n, cell.gates * H, dtype=torch.float64, requires_grad=True)
    state = random_state(cell, n, H)
    weight_hh, extra = p["weight_hh"], p["extra"]
    bias_hh = None if cell.fold_bias_hh else p["bias_hh"]

    new_state, cache = cell.step_forward(xw, state, weight_hh, bias_hh, *extra)
    assert len(new_state) == cell.num_states
    dstate = tuple(torch.randn_like(s) for s in new_state)
    loss = sum((s * d).sum() for s, d in zip(new_state, dstate))
    wrt = [*state, xw, weight_hh, bias_hh, *extra]
    names = ([f"d{name}_prev" for name in cell.state_names] + ["dxw", "dweight_hh", "dbias_hh"]
             + [f"d{name}" for name in cell.extra_param_shapes(H)])
    kept = [k for k, t in enumerate(wrt) if t is not None]
    reference = grads_of(loss, [wrt[k] for k in kept])

    with torch.no_grad():
        caches = [type(cache)(*(c.detach() for c in cache))]   # the same NamedTuple
        extra_d = tuple(e.detach() for e in extra)
        w_hh = None if weight_hh is None else weight_hh.detach()
        prepared = cell.prepare_backward(caches, *extra_d)
        dstate_prev, dxw, dhw, *rest = cell.step_backward(tuple(d.clone() for d in dstate),
                                                          prepared[0], w_hh, *extra_d)
        dweight_hh, *dextra = cell.param_backward(dhw, caches, *extra_d,
                                                  **({"kept": rest[0]} if rest else {}))
    hand = [*dstate_prev, dxw, dweight_hh, None if bias_hh is None else dhw.sum(0), *dextra]
    return [hand[k] for k in kept], reference, [names[k] for k in kept]


def fill_gates(param: torch.Tensor, values) -> None:
    """Set gate block k of ``param`` (rows k*H:(k+1)*H, torch's gate order) to values[k]."""
    with torch.no_grad():
        for block, value in zip(param.chunk(len(values)), values):
            block.fill_(value)


def forward_and_grads(module, input, hx=None, leaves=(), **kwargs):
    """A layer's outputs and the gradients of a fixed random loss of all of them.

    Returns ``(outputs, grads)``: the flat list ``[output, h_n(, c_n)]`` (a PackedSequence
    output as its data) and ``{name: gradient}`` for every parameter by name and for each
    tensor of ``leaves`` (named ``leaf0``, ``leaf1``, …: the input, hx, …).
    """
    out, state = module(input, hx, **kwargs)
    return _outputs_and_grads(flat_tensors(out, state), leaves, module.named_parameters())


def _outputs_and_grads(outputs, leaves, named_params):
    """``(outputs, {name: gradient})`` of the fixed random loss of ``outputs``."""
    names, params = zip(*named_params)
    leaf_names = [f"leaf{k}" for k in range(len(leaves))]
    found = grads_of(weighted_sum(outputs), [*leaves, *params])
    return outputs, dict(zip([*leaf_names, *names], found))


def assert_same_results(actual, expected, **tol) -> None:
    """Compare two ``forward_and_grads`` results: outputs, then every gradient by name."""
    (out_a, grads_a), (out_e, grads_e) = actual, expected
    assert_all_close(out_a, out_e, ["output", "h_n", "c_n"][:len(out_e)], **tol)
    assert sorted(grads_a) == sorted(grads_e)
    names = sorted(grads_e)
    assert_all_close([grads_a[n] for n in names], [grads_e[n] for n in names],
                     [f"grad {n}" for n in names], **tol)


def equations_results(step, layer, input, hx, lengths):
    """What ``forward_and_grads(layer, input, hx, leaves=(input, hx), lengths=lengths)``
    gives, computed instead from ``step`` — a cell's equations written out in plain torch —
    under autograd, with the layer's parameters and none of the engine.

    ``step(x_t, h, p) -> h`` maps one example's (I,) input and (H,) state to the new state;
    ``p`` holds one layer-direction's parameters by their torch.nn names without the
    ``_l{k}[_reverse]`` suffix. Each example runs alone over its own ``lengths[b]`` tokens
    (the reverse direction from its last one); ``input`` is (T, B, I) time-major, ``hx``
    (L*D, B, H) for a cell of one state; layers are joined without dropout.
    """
    T, B, _ = input.shape
    D, H = layer.num_directions, layer.hidden_size
    params = dict(layer.named_parameters())
    finals, x = [], input
    for k in range(layer.num_layers):
        outs = []
        for d in range(D):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            p = {n.removesuffix(suffix): v for n, v in params.items() if n.endswith(suffix)}
            columns = []
            for b, n in enumerate(lengths):
                h, hs = hx[k * D + d, b], [None] * n
                for t in (range(n - 1, -1, -1) if d else range(n)):
                    h = step(x[t, b], h, p)
                    hs[t] = h
                finals.append(h)
                columns.append(torch.stack(hs + [torch.zeros_like(h)] * (T - n)))   # (T, H)
            outs.append(torch.stack(columns, 1))                                    # (T, B, H)
        x = torch.cat(outs, 2)
    outputs = [x, torch.stack(finals).view(layer.num_layers * D, B, H)]
    return _outputs_and_grads(outputs, (input, hx), params.items())


def assert_stack_follows_equations(kind: str, step, backend: str = "bptt") -> None:
    """A 2-layer bidirectional float64 stack of the one-state cell ``kind`` on a padded
    batch of variable lengths gives what :func:`equations_results` computes from ``step``:
    outputs, final states and the gradients w.r.t. the input, h_0 and every parameter."""
    I, H, lengths = 3, 4, [5, 2, 4, 1]
    layer = make_layer(kind, {}, I, H, num_layers=2, bidirectional=True, backend=backend,
                       dtype=torch.float64)
    x = torch.randn(max(lengths), len(lengths), I, dtype=torch.float64, requires_grad=True)
    hx = (0.5 * torch.randn(4, len(lengths), H, dtype=torch.float64)).requires_grad_()
    assert_same_results(forward_and_grads(layer, x, hx, leaves=(x, hx), lengths=lengths),
                        equations_results(step, layer, x, hx, lengths),
                        rtol=1e-10, atol=1e-12)


@torch.no_grad()
def outputs_from_scan_coefficients(layer, input) -> torch.Tensor:
    """A one-layer stack's output (T, B, H) from a zero state, recomputed by the linear
    recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` from its cell's ``scan_coefficients`` of the
    input projection (the seam where a parallel scan would replace the loop)."""
    T, B, _ = input.shape
    xw = input.reshape(T * B, -1) @ layer.weight_ih_l0.t() + layer.bias_ih_l0    # (T*B, G*H)
    a, b = (c.view(T, B, -1) for c in layer.cell.scan_coefficients(xw))
    h, hs = torch.zeros_like(a[0]), []
    for a_t, b_t in zip(a, b):
        h = a_t * h + b_t
        hs.append(h)
    return torch.stack(hs)


def random_hx(kind: str, *shape, dtype=torch.float32):
    """A random initial state for a layer of the registered cell ``kind``: h_0, or a tuple
    (h_0, c_0, …) for a cell of several states, requiring grad; ``shape`` is (L*D, B, H) or
    unbatched (L*D, H)."""
    def one():
        return (0.5 * torch.randn(*shape, dtype=dtype)).requires_grad_()
    k = num_states(kind)
    return tuple(one() for _ in range(k)) if k > 1 else one()


def hx_leaves(hx) -> tuple:
    """The tensors of an initial state (for gradients)."""
    return () if hx is None else tuple(flat_tensors(hx))


# every (variant, explicit backend) pair that exists: the engine and its autograd for all
# cells, the fused kernel for the standard ones
VARIANT_BACKENDS = [pytest.param(kind, options, backend, id=f"{name}-{backend}")
                    for (kind, options), name in zip(VARIANTS, VARIANT_IDS)
                    for backend in backends_for(kind, options)]
each_variant_backend = pytest.mark.parametrize(("kind", "options", "backend"), VARIANT_BACKENDS)


def run_cli(args, capsys):
    """Run ``rnnkit ARGS`` in-process: (exit code, stdout, stderr)."""
    from rnnkit.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_cli_error(args, capsys, *fragments) -> str:
    """Assert ``rnnkit ARGS`` fails as bad input must: exit 2, one ``rnnkit: error:`` line
    holding every fragment, no traceback. Returns the message."""
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("rnnkit: error:")
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def train_losses(out) -> list[tuple[int, float]]:
    """(step, loss) of every training line in a run's ``metrics.jsonl``."""
    import json

    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(e["step"], e["loss"]) for e in map(json.loads, lines) if e["split"] == "train"]


def snapshot(folder) -> dict:
    """Every file under ``folder`` by relative path: its bytes (to prove nothing changed)."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


#: The address space a memory test's command line may use: enough for the tiny models of
#: the tests, far below what an unbounded read of their long inputs would take.
MEMORY_LIMIT = 3 * 1024 ** 3


def cli_under_memory_limit(*args, limit: int = MEMORY_LIMIT):
    """``python -m rnnkit ARGS`` in a subprocess under an address-space limit (one thread),
    so that a regression fails instead of exhausting the machine; the CompletedProcess."""
    import os
    import resource
    import subprocess
    import sys

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rnnkit", *map(str, args)],
                          capture_output=True, text=True, preexec_fn=limited, env=env,
                          timeout=300)

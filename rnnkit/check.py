"""Self-check: every cell's hand-derived BPTT against autograd and against ``torch.nn``.

``rnnkit check`` runs this on the user's own machine and prints one row per cell variant:
the largest difference between the hand backward and autograd of the same forward (float64,
a 2-layer bidirectional stack over a variable-length batch), whether
``torch.autograd.gradcheck`` passes, and the largest output/gradient difference from the
``torch.nn`` twin of the standard cells (float32, weights exchanged through ``state_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rnnkit.autograd import recurrent_bptt
from rnnkit.cells import Cell, cell_names, make_cell, torch_twin
from rnnkit.cells.base import engine_params
from rnnkit.layers import RecurrentStack

SIZES = (6, 3, 3, 4, [6, 3, 5])   # T, B, I, H and the lengths of the checked batch


@dataclass
class CheckRow:
    cell: str
    bptt_vs_autograd: float        # max |grad difference|, float64
    gradcheck: bool
    torch_nn: float | None         # max |difference| from torch.nn, float32; None: no twin

    @property
    def ok(self) -> bool:
        return (self.bptt_vs_autograd < 1e-10 and self.gradcheck
                and (self.torch_nn is None or self.torch_nn < 1e-4))


def _loss_and_grads(model, x, lengths, weights):
    out, state = model(x, lengths=lengths)
    h = state[0] if isinstance(state, tuple) else state
    loss = (out * weights).sum() + (h * h).sum()
    params = [p for _, p in sorted(model.named_parameters())]
    return [out, *torch.autograd.grad(loss, [x, *params])]


def _max_difference(a: list, b: list) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def check_cell(cell: Cell, seed: int = 0) -> CheckRow:
    """Verify a cell's hand-derived backward in one call — built-in or your own.

    Runs ``torch.autograd.gradcheck`` (float64) on the BPTT engine over a packed batch of
    variable lengths, walking time in reverse (so the state joins and leaves mid-sequence
    both ways), and compares every gradient of a 2-layer bidirectional stack with autograd
    of the same forward. ``row.ok`` is the verdict; the row has no ``torch_nn`` figure.
    Both run in training mode from the same random state, so a cell with training-time
    noise (zoneout, recurrent dropout) draws the same masks in both, and gradcheck sees
    the training-mode cell with its masks fixed by reseeding at every call.
    """
    torch.manual_seed(seed)
    T, B, I, H, lengths = SIZES
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(T, B, 2 * H, dtype=torch.float64)
    models = {b: RecurrentStack(I, H, 2, bidirectional=True, backend=b, dtype=torch.float64,
                                cell=cell) for b in ("bptt", "autograd")}
    models["autograd"].load_state_dict(models["bptt"].state_dict())
    results = []
    for backend in ("bptt", "autograd"):
        torch.manual_seed(seed + 1)
        results.append(_loss_and_grads(models[backend], x, lengths, weights))
    diff = _max_difference(*results)

    k, sizes = cell.num_states, [3, 2, 2, 1]
    shapes = cell.param_shapes(I, H)                        # every parameter the cell has
    args = [torch.randn(sum(sizes), I), *(torch.randn(sizes[0], H) for _ in range(k)),
            *(torch.randn(shape) for shape in shapes.values())]
    args = [a.to(torch.float64).requires_grad_() for a in args]

    def unrolled(x, *rest):
        w_ih, w_hh, b_ih, b_hh, extra = engine_params(dict(zip(shapes, rest[k:])))
        with torch.random.fork_rng():
            torch.manual_seed(seed + 2)                      # the same masks at every call
            out, final = recurrent_bptt(cell.for_mode(True), x, sizes, tuple(rest[:k]), w_ih,
                                        w_hh, b_ih, b_hh, extra, reverse=True)
        return (out, *final)

    passed = torch.autograd.gradcheck(unrolled, args, raise_exception=False)
    return CheckRow(getattr(cell, "name", type(cell).__name__), diff, passed, None)


def check_variant(name: str, options: dict | None = None, seed: int = 0) -> CheckRow:
    """:func:`check_cell` for a registered cell, plus the comparison with its ``torch.nn``
    twin (float32, weights exchanged through ``state_dict``) where one exists."""
    options = options or {}
    cell = make_cell(name, **options)
    row = check_cell(cell, seed)
    twin = torch_twin(cell)
    if twin is None:
        return row
    torch.manual_seed(seed)
    T, B, I, H, lengths = SIZES
    ours = RecurrentStack(I, H, 2, bidirectional=True, backend="bptt", cell=name,
                          cell_options=options)
    theirs = twin[0](I, H, 2, bidirectional=True, **twin[1])
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, requires_grad=True)
    weights = torch.randn(T, B, 2 * H)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_t, state_t = theirs(packed)
    out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_t, total_length=T)
    h_t = state_t[0] if isinstance(state_t, tuple) else state_t
    loss_t = (out_t * weights).sum() + (h_t * h_t).sum()
    grads_t = torch.autograd.grad(loss_t, [x, *[p for _, p in sorted(theirs.named_parameters())]])
    row.torch_nn = _max_difference(_loss_and_grads(ours, x, lengths, weights), [out_t, *grads_t])
    return row


def check_all() -> list[CheckRow]:
    """Check every cell the registry holds, once each ("rnn" with its default options is
    "rnn_tanh")."""
    seen, rows = set(), []
    for name in cell_names():
        if make_cell(name).name not in seen:
            rows.append(check_variant(name))
            seen.add(rows[-1].cell)
    return rows

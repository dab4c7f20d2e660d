"""What the layer-normalised cells' tests share: the paper's per-block layer norm written
with ``torch.nn.functional.layer_norm``, and a plain-autograd deep bidirectional stack that
runs each example alone over its own length — a reference that shares no code with rnnkit's
engine (no packing, no caches, no hand backward).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

import rnnkit
from conftest import forward_and_grads, grads_of, weighted_sum


def layer_norm_blocks(a, scale, shift, blocks):
    """LN of each of the ``blocks`` gate blocks of ``a`` (·, blocks*H) with its own gain and
    bias, as torch.nn.functional.layer_norm computes it (ε = 1e-5)."""
    return torch.cat([F.layer_norm(x, x.shape[-1:], w, b) for x, w, b in
                      zip(a.chunk(blocks, -1), scale.chunk(blocks), shift.chunk(blocks))], -1)


def _layer_params(params: dict, layer: int, direction: int) -> dict:
    """{"weight_ih": …, "ln_scale_c": …} of one layer-direction, from torch-style full names."""
    suffix = re.compile(rf"_l{layer}{'_reverse' if direction else ''}$")
    return {suffix.sub("", name): p for name, p in params.items() if suffix.search(name)}


def run_stack(step, params: dict, x, lengths, hx: tuple, num_layers: int, hidden_size: int):
    """A bidirectional stack of ``step(x_t (1, I), state tuple, params) -> state``: each
    example alone, forward over its first ``lengths[b]`` steps and backward from its own
    last one. Returns the padded output (T, B, 2H) and the final states (2L, B, H) each."""
    T, B, _ = x.shape
    layer_input = x
    finals = [[[None] * B for _ in range(2 * num_layers)] for _ in hx]
    for layer in range(num_layers):
        columns = []                                        # one (T, B, H) per direction
        for direction in range(2):
            index = 2 * layer + direction
            p = _layer_params(params, layer, direction)
            per_example = []
            for b in range(B):
                state = tuple(s[index, b:b + 1] for s in hx)
                steps = range(lengths[b]) if direction == 0 else reversed(range(lengths[b]))
                outs = {}
                for t in steps:
                    state = step(layer_input[t, b:b + 1], state, p)
                    outs[t] = state[0][0]
                for k, s in enumerate(state):
                    finals[k][index][b] = s[0]
                zero = x.new_zeros(hidden_size)
                per_example.append(torch.stack([outs.get(t, zero) for t in range(T)]))
            columns.append(torch.stack(per_example, 1))     # (T, B, H)
        layer_input = torch.cat(columns, -1)                # (T, B, 2H)
    return layer_input, tuple(torch.stack([torch.stack(f) for f in per_state])
                              for per_state in finals)


def reference_forward_and_grads(step, module, x, hx: tuple, lengths):
    """:func:`conftest.forward_and_grads` of ``run_stack`` on copies of ``module``'s
    parameters: outputs ``[output, h_n(, c_n)]`` and the gradients by the same names
    (``leaf0`` the input, ``leaf1``… the initial states, then every parameter)."""
    params = {name: p.detach().clone().requires_grad_() for name, p in module.named_parameters()}
    x = x.detach().clone().requires_grad_()
    hx = tuple(s.detach().clone().requires_grad_() for s in hx)
    out, final = run_stack(step, params, x, lengths, hx, module.num_layers, module.hidden_size)
    outputs = [out, *final]
    leaves = [x, *hx]
    grads = grads_of(weighted_sum(outputs), [*leaves, *params.values()])
    names = [f"leaf{k}" for k in range(len(leaves))] + list(params)
    return outputs, dict(zip(names, grads))


def stack_and_reference(step, cell: str, backend: str, bias: bool):
    """``forward_and_grads`` of a 2-layer bidirectional ``cell`` stack over a batch of
    lengths [5, 2, 4] with a random initial state, and the same of :func:`run_stack` with
    ``step`` on its parameters — random, the layer norms' gains far from the init's."""
    I, H, lengths = 3, 4, [5, 2, 4]
    T, B = max(lengths), len(lengths)
    stack = rnnkit.RecurrentStack(I, H, 2, bias=bias, bidirectional=True, cell=cell,
                                  backend=backend, dtype=torch.float64)
    with torch.no_grad():
        for name, p in stack.named_parameters():
            p.copy_(torch.randn_like(p) * (0.7 if name.startswith("ln_scale") else 0.5))
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    hx = tuple((0.5 * torch.randn(4, B, H, dtype=torch.float64)).requires_grad_()
               for _ in range(stack.cell.num_states))
    got = forward_and_grads(stack, x, hx if len(hx) > 1 else hx[0], leaves=(x, *hx),
                            lengths=lengths)
    return got, reference_forward_and_grads(step, stack, x, hx, lengths)


# -- golden numbers on Python floats ---------------------------------------------------------

def sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def normalized(v: list[float]) -> list[float]:
    """A list normalised as torch.nn.functional.layer_norm does (biased variance, ε 1e-5)."""
    mean = sum(v) / len(v)
    var = sum((e - mean) ** 2 for e in v) / len(v)
    return [(e - mean) / math.sqrt(var + 1e-5) for e in v]

"""Gate and state statistics: how open the gates are, and how the recurrent matrices scale.

- :func:`gate_statistics`: for each LSTM/GRU layer-direction, the distribution of every
  gate's activations over some data — the mean, and the fractions saturated near 0
  (< ``low``) and near 1 (> ``high``). A forget gate stuck near 0 forgets at every step; a
  gate saturated either way passes almost no gradient through its own derivative.
- :func:`recurrent_matrix_statistics`: the spectral radius and largest singular value of
  each gate's block of every recurrent matrix — above 1 the linearised recurrence can
  explode, well below 1 it vanishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rnnkit.bptt import OBSERVERS
from rnnkit.diagnostics.gradient_flow import hand_bptt
from rnnkit.layers import RecurrentStack
from rnnkit.plotting import new_figure, save_figure


@dataclass
class GateStats:
    """One gate of one layer-direction call: ``mean``, fraction ``< low`` and ``> high``."""

    index: int
    reverse: bool
    gate: str
    mean: float
    near_zero: float
    near_one: float
    count: int


def gate_statistics(model: nn.Module, run: Callable[[], object], *, low: float = 0.1,
                    high: float = 0.9) -> list[GateStats]:
    """Gate activations of every rnnkit layer call made by ``run()``, summarised.

    ``run`` runs the model forward on some data (no gradient is taken). Layers run on the
    hand BPTT engine, whose per-step caches hold the gates. Elman layers have no gates and
    report nothing.
    """
    if not 0 <= low < high <= 1:
        raise ValueError(f"low, high: expected 0 <= low < high <= 1, got {low}, {high}")
    stats: list[GateStats] = []
    calls = [0]

    def factory(cell, batch_sizes, reverse, caches):
        values: dict[str, list[torch.Tensor]] = {}
        for cache in caches:
            for name, gate in cell.gate_activations(cache).items():
                values.setdefault(name, []).append(gate.detach().reshape(-1))
        for name, parts in values.items():
            v = torch.cat(parts)
            stats.append(GateStats(calls[0], reverse, name, v.mean().item(),
                                   (v < low).float().mean().item(),
                                   (v > high).float().mean().item(), v.numel()))
        calls[0] += 1
        return None

    with hand_bptt(model), torch.no_grad():
        token = OBSERVERS.set(factory)
        try:
            run()
        finally:
            OBSERVERS.reset(token)
    return stats


@dataclass
class MatrixStats:
    """One gate block (H, H) of one recurrent matrix."""

    parameter: str
    gate: str
    spectral_radius: float
    largest_singular_value: float


def recurrent_matrix_statistics(model: nn.Module) -> list[MatrixStats]:
    """Spectral radius and largest singular value of each gate block of every ``weight_hh``.

    A diagonal recurrent weight (IndRNN's u, a vector) is a diagonal matrix: both figures
    are max |u|. Layers whose cell has no recurrent weight (minGRU, minLSTM) have nothing
    to report; a model made only of such layers is an error saying so.
    """
    rows, weightless = [], []
    for prefix, module in model.named_modules():
        if not isinstance(module, RecurrentStack):
            continue
        cell = module.cell
        names = (cell.gate_names if len(cell.gate_names) == cell.gates
                 else tuple(f"block {k}" for k in range(cell.gates)))
        if cell.weight_hh_shape(module.hidden_size) is None:
            weightless.append(repr(cell))
            continue
        for name, p in module.named_parameters():
            if not name.startswith("weight_hh"):
                continue
            full = f"{prefix}.{name}" if prefix else name
            w = p.detach().double().cpu()
            for gate, block in zip(names, w.split(module.hidden_size)):
                if block.dim() == 1:                        # diag(u): |eigenvalues| = |u|
                    radius = norm = block.abs().max().item()
                else:
                    radius = torch.linalg.eigvals(block).abs().max().item()
                    norm = torch.linalg.matrix_norm(block, ord=2).item()
                rows.append(MatrixStats(full, gate, radius, norm))
    if not rows and weightless:
        raise ValueError(f"model: its recurrent layers ({', '.join(sorted(set(weightless)))}) "
                         f"have no recurrent weight matrix to analyse")
    if not rows:
        raise ValueError(f"model: a {type(model).__name__} has no rnnkit recurrent layer")
    return rows


def plot_gate_statistics(stats: list[GateStats], path, *, title: str = "") -> None:
    """Stacked bars per gate and layer-direction: saturated near 0, in between, near 1."""
    labels = [f"{s.index}{'r' if s.reverse else ''}:{s.gate}" for s in stats]
    zero = [s.near_zero for s in stats]
    one = [s.near_one for s in stats]
    middle = [1 - a - b for a, b in zip(zero, one)]
    fig, ax = new_figure(max(5, 0.6 * len(stats) + 2), 4)
    ax.bar(labels, zero, label="< low (closed)")
    ax.bar(labels, middle, bottom=zero, label="between")
    ax.bar(labels, one, bottom=[a + b for a, b in zip(zero, middle)], label="> high (open)")
    ax.set_ylabel("fraction of activations")
    ax.set_title(title or "gate saturation per layer")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    save_figure(fig, path)

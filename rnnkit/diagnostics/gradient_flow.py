"""Gradient flow through time: how much of the loss's gradient reaches each time step.

The classic picture of why LSTM and GRU exist: for a loss at the last step, the norm of
``dL/dh_t`` shrinks (or explodes) geometrically as t moves back in a plain tanh RNN, and
stays alive through an LSTM's cell state. rnnkit reads these norms straight from its BPTT
engine: during the backward pass the engine hands every step's full state gradient —
through the output and all later steps — to an observer (``rnnkit.bptt.OBSERVERS``).

    flows = gradient_flow(model, lambda: loss_of(model))   # one entry per layer-direction
    plot_gradient_flow({"tanh RNN": rnn_flows, "LSTM": lstm_flows}, "flow.png")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rnnkit.bptt import OBSERVERS
from rnnkit.layers import RecurrentStack
from rnnkit.plotting import new_figure, save_figure


@dataclass
class LayerFlow:
    """Per-step gradient norms of one layer-direction, in forward-call order.

    ``h[t]`` is the mean over the examples active at step t of ``‖dL/dh_t‖``; ``c[t]`` the
    same for an LSTM's cell state (empty for other cells).
    """

    index: int
    reverse: bool
    h: list[float] = field(default_factory=list)
    c: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"index": self.index, "reverse": self.reverse, "h": self.h, "c": self.c}


@contextmanager
def recording_state_gradients() -> Iterator[list[LayerFlow]]:
    """Inside the block, every BPTT-engine layer call records its state-gradient norms."""
    flows: list[LayerFlow] = []

    def factory(cell, batch_sizes: list[int], reverse: bool, caches):
        flow = LayerFlow(len(flows), reverse, [0.0] * len(batch_sizes))
        flows.append(flow)

        def observe(t: int, dstate: tuple[Tensor, ...]) -> None:
            flow.h[t] = dstate[0].norm(dim=1).mean().item()
            if len(dstate) > 1:
                if not flow.c:
                    flow.c = [0.0] * len(batch_sizes)
                flow.c[t] = dstate[1].norm(dim=1).mean().item()
        return observe

    token = OBSERVERS.set(factory)
    try:
        yield flows
    finally:
        OBSERVERS.reset(token)


@contextmanager
def hand_bptt(model: nn.Module) -> Iterator[nn.Module]:
    """Run every rnnkit layer of ``model`` on the hand BPTT engine inside the block."""
    layers = [m for m in model.modules() if isinstance(m, RecurrentStack)]
    if not layers:
        raise ValueError(f"model: a {type(model).__name__} has no rnnkit recurrent layer to "
                         f"diagnose")
    saved = [m.backend for m in layers]
    for m in layers:
        m.backend = "bptt"
    try:
        yield model
    finally:
        for m, backend in zip(layers, saved):
            m.backend = backend


def gradient_flow(model: nn.Module, loss_fn: Callable[[], Tensor]) -> list[LayerFlow]:
    """Norms of ``dL/dh_t`` (and ``dL/dc_t``) at every step of every recurrent layer.

    Args:
        model: any module holding rnnkit recurrent layers (they run on the hand engine).
        loss_fn: runs the forward and returns the scalar loss to differentiate.

    Returns:
        one :class:`LayerFlow` per layer-direction call, in the order the forward ran them.
        Parameter gradients are left as they were.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    with hand_bptt(model), recording_state_gradients() as flows:
        loss = loss_fn()
        torch.autograd.grad(loss, params, allow_unused=True)
    return flows


def plot_gradient_flow(series: dict[str, list[LayerFlow]], path, *, title: str = "",
                       state: str = "h") -> None:
    """Draw ``‖dL/d{state}_t‖`` against t, log scale, one line per label and layer."""
    fig, ax = new_figure()
    for label, flows in series.items():
        for flow in flows:
            values = getattr(flow, state) or flow.h
            name = label if len(flows) == 1 else f"{label}, layer-direction {flow.index}"
            ax.semilogy(range(len(values)), [max(v, 1e-30) for v in values], label=name)
    ax.set_xlabel("time step t")
    ax.set_ylabel(f"‖∂L/∂{state}_t‖ (mean over examples)")
    ax.set_title(title or "gradient flow through time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)

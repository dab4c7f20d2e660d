"""Running exported graphs with onnxruntime and comparing them with PyTorch: the helpers
the export tests share (``from parity import …``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from rnnkit.models.lm import LanguageModel

TOL = 1e-4      # max abs difference of fp32 log-probabilities (and states) allowed
# (T, B) pairs unlike the example the graphs are traced with (T=3, B=2)
SIZES = [(1, 1), (6, 3)]


def session(path) -> ort.InferenceSession:
    """An onnxruntime session on one thread (the tests share two cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def flat_state(state) -> list[torch.Tensor]:
    """A language model's state (layers of h or (h, c)) as the graphs' flat list."""
    return [t for layer in state for t in (layer if isinstance(layer, tuple) else (layer,))]


def random_state(model, B: int):
    """A random state of the model's layout (a zero one would hide a state mix-up)."""
    return tuple(tuple(0.5 * torch.randn_like(t) for t in s) if isinstance(s, tuple)
                 else 0.5 * torch.randn_like(s) for s in model.initial_state(B))


def max_diff(got: list[np.ndarray], expected: list[torch.Tensor]) -> float:
    """Max abs difference of onnxruntime's outputs from PyTorch's, output by output of
    the same shapes (printed: see the figures with ``pytest -s``)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == tuple(e.shape), (g.shape, tuple(e.shape))
    worst = max(float(np.abs(g.astype(np.float64) - e.detach().double().numpy()).max())
                for g, e in zip(got, expected))
    print(f"max abs diff {worst:.2e}")
    return worst


def lm_parity(model: LanguageModel, folder: Path) -> dict[str, float]:
    """Max abs difference of onnxruntime against PyTorch per graph, over :data:`SIZES`."""
    sequence, step = session(folder / "sequence.onnx"), session(folder / "step.onnx")
    names = [i.name for i in step.get_inputs()][1:]
    worst = {"sequence": 0.0, "step": 0.0}
    V = model.config.vocab_size
    for T, B in SIZES:
        tokens = torch.randint(0, V, (T, B))
        state = random_state(model, B)
        feeds = {n: t.numpy() for n, t in zip(names, flat_state(state))}
        with torch.no_grad():
            hidden, final = model(tokens, state)
            expected = [model.log_probs(hidden), *flat_state(final)]
            step_lp, step_state = model.step(tokens[0], state)
        got = sequence.run(None, {"tokens": tokens.numpy(), **feeds})
        worst["sequence"] = max(worst["sequence"], max_diff(got, expected))
        got = step.run(None, {"tokens": tokens[0].numpy(), **feeds})
        worst["step"] = max(worst["step"], max_diff(got, [step_lp, *flat_state(step_state)]))
    return worst

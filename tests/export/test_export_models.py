"""Model options beyond the cells export too: every softmax head of a language model,
every pooling of a classifier (onnxruntime against PyTorch, max abs difference <= 1e-4);
what is not exported is refused with a clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rnnkit.export import export_graphs, state_layout
from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier
from rnnkit.models.lm import LanguageModel, LMConfig
from parity import TOL, lm_parity, max_diff, session

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.gated_cell import GatedCell  # noqa: E402


class HalfStartCell(GatedCell):
    """A user's cell whose streams start from h = 0.5, not from zeros."""

    def initial_state(self, batch, hidden_size, *, dtype=None, device=None):
        return (torch.full((batch, hidden_size), 0.5, dtype=dtype, device=device),)


@pytest.mark.parametrize(("head", "options"), [("class", {"num_classes": 4}),
                                               ("adaptive", {"adaptive_cutoffs": (8,)})])
def test_every_softmax_head_exports(head, options, tmp_path):
    V = 24
    model = LanguageModel(LMConfig(vocab_size=V, cell="gru", hidden_size=8, num_layers=1,
                                   softmax=head, **options),
                          counts=list(range(V, 0, -1))).eval()
    export_graphs("lm", model, tmp_path)
    worst = lm_parity(model, tmp_path)
    assert max(worst.values()) <= TOL, worst


@pytest.mark.parametrize("pooling", ["final", "mean", "max"])
def test_every_classifier_pooling_exports(pooling, tmp_path):
    model = SequenceClassifier(ClassifierConfig(
        vocab_size=20, num_classes=3, cell="lstm", embedding_size=5, hidden_size=6,
        num_layers=1, pooling=pooling, dropout=0.0)).eval()
    export_graphs("classifier", model, tmp_path)
    graph = session(tmp_path / "classifier.onnx")
    lengths = torch.tensor([2, 7, 4, 1])
    tokens = torch.randint(3, 20, (7, 4))
    with torch.no_grad():
        expected = torch.log_softmax(model(tokens, lengths), -1)
    got = graph.run(None, {"tokens": tokens.numpy(), "lengths": lengths.numpy()})
    assert max_diff(got, [expected]) <= TOL


@pytest.mark.parametrize(("cell", "condition", "mode"), [("lstm", "label", "input"),
                                                       ("gru", "vector", "init")])
def test_conditioned_lm_graphs_match_pytorch(cell, condition, mode, tmp_path):
    """The initial_state graph turns a condition into the first state; step and sequence
    take the condition vector as one more state."""
    model = LanguageModel(LMConfig(vocab_size=15, cell=cell, hidden_size=6, num_layers=2,
                                   condition=condition, num_conditions=3 if
                                   condition == "label" else 0, condition_size=4,
                                   condition_mode=mode)).eval()
    graphs = export_graphs("conditioned_lm", model, tmp_path)
    assert sorted(graphs) == ["initial_state", "sequence", "step"]
    initial, sequence, step = (session(tmp_path / f"{g}.onnx")
                               for g in ("initial_state", "sequence", "step"))
    names = [i.name for i in step.get_inputs()][1:]
    assert names[-1] == "condition_vector"
    for T, B in [(1, 1), (5, 3)]:
        given = torch.randint(0, 3, (B,)) if condition == "label" else torch.randn(B, 4)
        tokens = torch.randint(0, 15, (T, B))
        with torch.no_grad():
            state = model.initial_state(B, condition=given)
            flat = [t for s in state for t in (s if isinstance(s, tuple) else (s,))]
            hidden, final = model(tokens, state)
            step_lp, step_state = model.step(tokens[0], state)
        first = initial.run(None, {"condition": given.numpy()})
        assert max_diff(first, flat) <= TOL
        feeds = dict(zip(names, first))
        got = sequence.run(None, {"tokens": tokens.numpy(), **feeds})
        finals = [t for s in final[:-1] for t in (s if isinstance(s, tuple) else (s,))]
        assert max_diff(got, [model.log_probs(hidden), *finals]) <= TOL
        got = step.run(None, {"tokens": tokens[0].numpy(), **feeds})
        news = [t for s in step_state[:-1] for t in (s if isinstance(s, tuple) else (s,))]
        assert max_diff(got, [step_lp, *news]) <= TOL


def test_an_unknown_format_or_task_is_refused(tmp_path):
    model = LanguageModel(LMConfig(vocab_size=10, hidden_size=4, num_layers=1))
    with pytest.raises(ValueError, match="--format"):
        export_graphs("lm", model, tmp_path, "tflite")
    with pytest.raises(ValueError, match="'speech' models are not exported"):
        export_graphs("speech", model, tmp_path)


def test_a_cell_that_does_not_start_from_zeros_gives_its_initial_value():
    model = LanguageModel(LMConfig(vocab_size=10, hidden_size=3, num_layers=2,
                                   cell="test_export_models:HalfStartCell"))
    states = state_layout("lm", model)
    assert [s["name"] for s in states] == ["h_l0", "h_l1"]
    expected = model.initial_state(1)
    for spec, first in zip(states, expected):
        assert spec["initial_value"] == first[0, 0].tolist() == [0.5] * 3
    plain = state_layout("lm", LanguageModel(LMConfig(vocab_size=10, hidden_size=3,
                                                      num_layers=1, cell="lstm")))
    assert [s["name"] for s in plain] == ["h_l0", "c_l0"]
    assert not any("initial_value" in s for s in plain)

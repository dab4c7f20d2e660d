"""Every registered cell, and a user's cell written in torch ops, exports as a language
model's step and sequence graphs that onnxruntime runs with the same log-probabilities and
states as PyTorch (fp32, max abs difference <= 1e-4), at batch and sequence sizes other
than those the graphs were traced with."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import rnnkit.export
from conftest import VARIANT_IDS
from parity import TOL, lm_parity
from rnnkit.export import export_graphs
from rnnkit.models.lm import LanguageModel, LMConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import examples.gated_cell  # noqa: E402,F401  (a user cell's module, imported by the program)

USER_CELL = "examples.gated_cell:GatedCell"


@pytest.mark.parametrize("cell", VARIANT_IDS + [USER_CELL])
def test_lm_graphs_of_every_cell_match_pytorch(cell, tmp_path, monkeypatch):
    layers = 2 if cell == VARIANT_IDS[0] else 1     # one two-layer model wires layer states
    model = LanguageModel(LMConfig(vocab_size=20, cell=cell, hidden_size=8, num_layers=layers,
                                   embedding_size=6)).eval()
    if cell == USER_CELL:       # also the path of graphs over 1 GiB: weights in a file beside
        monkeypatch.setattr(rnnkit.export, "ONNX_INLINE_BYTES", 0)
    graphs = export_graphs("lm", model, tmp_path)
    assert sorted(graphs) == ["sequence", "step"]
    if cell == USER_CELL:
        assert graphs["step"]["weights"] == "step.onnx.data"
        assert (tmp_path / "step.onnx.data").is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "sequence.onnx", "sequence.onnx.data", "step.onnx", "step.onnx.data"]
    worst = lm_parity(model, tmp_path)
    print(f"{cell}: max abs diff step {worst['step']:.2e}, sequence {worst['sequence']:.2e}")
    assert worst["step"] <= TOL and worst["sequence"] <= TOL, worst


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = LanguageModel(LMConfig(vocab_size=20, cell="gru", hidden_size=8, num_layers=1))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_graphs("lm", model, tmp_path)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

"""A user's own cell: the documented example passes check_cell; a wrong backward does not."""

import sys
from pathlib import Path

import torch

import rnnkit
from rnnkit.check import check_cell

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.gated_cell import GatedCell  # noqa: E402


def test_example_cell_passes_check_cell():
    row = check_cell(GatedCell())
    assert row.ok and row.gradcheck and row.bptt_vs_autograd < 1e-10


def test_check_cell_catches_a_wrong_backward():
    class Wrong(GatedCell):
        def step_backward(self, dstate, cache, weight_hh, *extra):
            (dh_prev,), da, _ = super().step_backward(dstate, cache, weight_hh)
            return (dh_prev * 0.5,), da, da                 # half the recurrent gradient

    row = check_cell(Wrong())
    assert not row.ok and not row.gradcheck and row.bptt_vs_autograd > 1e-6


def test_custom_cell_in_a_layer_matches_its_autograd_reference():
    torch.manual_seed(0)
    layers = {b: rnnkit.RecurrentStack(5, 6, 2, bidirectional=True, backend=b,
                                       cell=GatedCell()) for b in ("bptt", "autograd")}
    layers["autograd"].load_state_dict(layers["bptt"].state_dict())
    x = torch.randn(7, 3, 5)
    outs = {b: layer(x, lengths=[7, 2, 5]) for b, layer in layers.items()}
    torch.testing.assert_close(outs["bptt"][0], outs["autograd"][0])
    assert outs["bptt"][0].shape == (7, 3, 12) and outs["bptt"][1].shape == (4, 3, 6)

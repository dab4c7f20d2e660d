"""The parallel-scan engine (rnnkit.scan) against the step engine and autograd."""

from __future__ import annotations

import pytest
import torch

from rnnkit.cells import make_cell
from rnnkit.layers import RecurrentStack
from rnnkit.scan import ScanFunction, linear_scan

CELLS = ["min_gru", "min_lstm"]


def loop_scan(a, b, h0):
    h, out = h0, []
    for a_t, b_t in zip(a, b):
        h = a_t * h + b_t
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("method, chunk", [("log", 1), ("log", 3), ("log", 128),
                                           ("sequential", None)])
def test_linear_scan_equals_the_loop(method, chunk):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 3, 5, generator=g, dtype=torch.float64)
    a[5, 0] = 0.0                                     # a forgotten state
    a[7, 1] = 1.0                                     # a kept one
    b = torch.randn(40, 3, 5, generator=g, dtype=torch.float64)   # both signs
    b[9] = 0.0
    h0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, b, h0, method, chunk or 128), loop_scan(a, b, h0),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", ["sequential", "log"])
def test_the_hand_backward_passes_gradcheck(cell, reverse, method):
    torch.manual_seed(0)
    c = make_cell(cell)
    G, H, I = c.gates, 3, 2
    sizes = [3, 3, 2, 1]                               # lengths 4, 3, 2
    x = torch.randn(sum(sizes), I, dtype=torch.float64, requires_grad=True)
    w = torch.randn(G * H, I, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(G * H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, H, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: ScanFunction.apply(c, sizes, reverse, method, *t), (x, w, bias, h0))


def _results(layer, x, hx, lengths):
    out, hn = layer(x, hx, lengths=lengths)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + \
        (hn * torch.randn(hn.shape, generator=g, dtype=hn.dtype)).sum()
    return [out, hn, *torch.autograd.grad(loss, [x, hx, *layer.parameters()])]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_scan_equals_the_step_engine(cell, bidirectional):
    """Same parameters: same outputs, final states and every gradient — deep, with variable
    lengths and a carried state."""
    torch.manual_seed(0)
    D = 2 if bidirectional else 1
    step = RecurrentStack(4, 6, cell=cell, num_layers=2, bidirectional=bidirectional,
                          backend="bptt").double()
    scan = RecurrentStack(4, 6, cell=cell, num_layers=2, bidirectional=bidirectional,
                          backend="scan").double()
    scan.load_state_dict(step.state_dict())
    x = torch.randn(11, 5, 4, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(2 * D, 5, 6, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([11, 2, 8, 1, 11])
    for a, b in zip(_results(scan, x, hx, lengths), _results(step, x, hx, lengths)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_over_a_long_sequence_stays_close(cell):
    """Both scans in float32 at T = 2048 against the step engine in float64 (the log-space
    one, the method for a GPU, is run here on the CPU)."""
    from rnnkit.scan import recurrent_scan

    torch.manual_seed(0)
    step = RecurrentStack(8, 16, cell=cell, backend="bptt").double()
    x = torch.randn(2048, 2, 8)
    out64, _ = step(x.double())
    p = {k: v.float() for k, v in step.state_dict().items()}
    for method in ("sequential", "log"):
        out32, _ = recurrent_scan(step.cell, x.reshape(-1, 8), [2] * 2048,
                                  (torch.zeros(2, 16),), p["weight_ih_l0"], None,
                                  p["bias_ih_l0"], None, method=method)
        error = (out32.view(2048, 2, 16).double() - out64).abs().max()
        assert error < 1e-4 * out64.abs().max(), (method, error)


def test_scan_refuses_cells_it_cannot_run():
    with pytest.raises(ValueError, match="'scan' trains cells whose state is linear"):
        RecurrentStack(3, 4, cell="lstm", backend="scan")
    with pytest.raises(ValueError, match="without zoneout"):
        RecurrentStack(3, 4, cell="min_gru", cell_options={"zoneout": 0.1}, backend="scan")

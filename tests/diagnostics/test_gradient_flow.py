"""Gradient flow read from the BPTT engine equals autograd's dL/dh_t of an explicit unroll."""

import pytest
import torch

import rnnkit
from rnnkit.bptt import input_projection
from rnnkit.cells.base import engine_params
from rnnkit.diagnostics import gradient_flow, plot_gradient_flow


def _explicit_state_grads(layer, x, weights):
    """dL/dh_t (and dL/dc_t) by autograd on a hand-written unroll with retained states."""
    cell = layer.cell
    params = {name[:-3]: p for name, p in layer.named_parameters() if name.endswith("_l0")}
    w_ih, w_hh, b_ih, b_hh, extra = engine_params(params)
    T, B, _ = x.shape
    xw = input_projection(cell, x.reshape(T * B, -1), w_ih, b_ih, b_hh).view(T, B, -1)
    state = tuple(torch.zeros(B, layer.hidden_size, dtype=x.dtype) for _ in range(cell.num_states))
    states = []
    for t in range(T):
        state, _ = cell.step_forward(xw[t], state, w_hh, None if cell.fold_bias_hh else b_hh,
                                     *extra)
        for s in state:
            s.retain_grad()
        states.append(state)
    loss = (states[-1][0] * weights).sum()
    loss.backward()
    return [[s.grad.norm(dim=1).mean().item() for s in st] for st in states]


@pytest.mark.parametrize("cls, options", [(rnnkit.RNN, {}), (rnnkit.LSTM, {}),
                                          (rnnkit.GRU, {"reset_after": False})])
def test_flow_matches_autograd_of_explicit_unroll(cls, options):
    torch.manual_seed(0)
    layer = cls(3, 5, dtype=torch.float64, **options)
    x = torch.randn(9, 4, 3, dtype=torch.float64)
    weights = torch.randn(4, 5, dtype=torch.float64)

    def loss():
        out, _ = layer(x)
        return (out[-1] * weights).sum()

    (flow,) = gradient_flow(layer, loss)
    expected = _explicit_state_grads(layer, x, weights)
    torch.testing.assert_close(torch.tensor(flow.h), torch.tensor([e[0] for e in expected]))
    if cls is rnnkit.LSTM:
        torch.testing.assert_close(torch.tensor(flow.c), torch.tensor([e[1] for e in expected]))
    assert layer.backend == "auto"                          # restored after the diagnosis


def test_tanh_rnn_gradient_vanishes_faster_than_lstm_with_forget_bias():
    torch.manual_seed(0)
    x = torch.randn(60, 8, 2)
    ratios = {}
    for name, layer in {"rnn": rnnkit.RNN(2, 32), "lstm": rnnkit.LSTM(2, 32, forget_bias=3.0)}.items():
        (flow,) = gradient_flow(layer, lambda: layer(x)[0][-1].sum())
        ratios[name] = flow.h[0] / flow.h[-1]
    assert ratios["rnn"] < 1e-6 < ratios["lstm"]


def test_stack_reports_every_layer_direction_and_plots(tmp_path):
    torch.manual_seed(0)
    stack = rnnkit.GRU(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3)
    flows = gradient_flow(stack, lambda: stack(x, lengths=[6, 4])[0].sum())
    assert [f.reverse for f in flows] == [False, True, False, True]
    assert all(len(f.h) == 6 and all(v > 0 for v in f.h) for f in flows)
    plot_gradient_flow({"gru": flows}, tmp_path / "flow.png")
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_without_recurrent_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="no rnnkit recurrent layer"):
        gradient_flow(torch.nn.Linear(2, 2), lambda: torch.zeros(()))

"""Gate statistics equal the gates recomputed from the weights; matrix norms are exact."""

import pytest
import torch

import rnnkit
from rnnkit.diagnostics import gate_statistics, plot_gate_statistics, recurrent_matrix_statistics


def test_lstm_gate_statistics_match_a_recomputation(tmp_path):
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4, forget_bias=2.0)
    x = torch.randn(6, 5, 3)
    stats = {s.gate: s for s in gate_statistics(layer, lambda: layer(x))}
    # recompute the gates with torch.nn.LSTMCell on the same weights
    ref = torch.nn.LSTMCell(3, 4)
    ref.load_state_dict({k.replace("_l0", ""): v for k, v in layer.state_dict().items()})
    h = c = torch.zeros(5, 4)
    gates = {"input": [], "forget": [], "output": []}
    with torch.no_grad():
        for t in range(6):
            a = x[t] @ ref.weight_ih.T + ref.bias_ih + h @ ref.weight_hh.T + ref.bias_hh
            i, f, g, o = a.chunk(4, 1)
            gates["input"].append(i.sigmoid())
            gates["forget"].append(f.sigmoid())
            gates["output"].append(o.sigmoid())
            h, c = ref(x[t], (h, c))
    for name, parts in gates.items():
        v = torch.cat(parts).flatten()
        assert stats[name].mean == pytest.approx(v.mean().item(), rel=1e-5)
        assert stats[name].near_one == pytest.approx((v > 0.9).float().mean().item())
        assert stats[name].near_zero == pytest.approx((v < 0.1).float().mean().item())
    assert stats["forget"].mean > 0.75                       # the +2 forget bias shows
    plot_gate_statistics(list(stats.values()), tmp_path / "gates.png")
    assert (tmp_path / "gates.png").stat().st_size > 0


def test_gru_reports_reset_and_update_per_direction():
    gru = rnnkit.GRU(3, 4, num_layers=2, bidirectional=True)
    stats = gate_statistics(gru, lambda: gru(torch.randn(5, 2, 3)))
    assert [(s.index, s.gate) for s in stats] == [(i, g) for i in range(4)
                                                  for g in ("reset", "update")]


def test_matrix_statistics_of_identity_and_orthogonal_blocks():
    irnn = rnnkit.RNN(3, 6, nonlinearity="relu", init="identity")
    (row,) = recurrent_matrix_statistics(irnn)
    assert row.spectral_radius == pytest.approx(1.0) and row.largest_singular_value == pytest.approx(1.0)
    lstm = rnnkit.LSTM(3, 6, init="orthogonal")
    rows = recurrent_matrix_statistics(lstm)
    assert [r.gate for r in rows] == ["input", "forget", "candidate", "output"]
    assert all(r.largest_singular_value == pytest.approx(1.0, abs=1e-5) for r in rows)
    scaled = rnnkit.RNN(3, 6, init="identity")
    with torch.no_grad():
        scaled.weight_hh_l0.mul_(0.5)
    assert recurrent_matrix_statistics(scaled)[0].spectral_radius == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no rnnkit recurrent layer"):
        recurrent_matrix_statistics(torch.nn.Linear(2, 2))

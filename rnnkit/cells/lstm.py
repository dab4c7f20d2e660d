"""LSTM cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

Gate order i, f, g, o, as ``torch.nn.LSTM``; parameters ``weight_ih`` (4H, I),
``weight_hh`` (4H, H), ``bias_ih`` and ``bias_hh`` (4H,). Equations in the code's symbols::

    a = x_t @ weight_ih.T + bias_ih + h_{t-1} @ weight_hh.T + bias_hh      (n, 4H)
    i = σ(a_i [+ p_i ⊙ c_{t-1}])       input gate
    f = σ(a_f [+ p_f ⊙ c_{t-1}])       forget gate
    g = tanh(a_g)                      candidate
    c_t = f ⊙ c_{t-1} + i ⊙ g
    o = σ(a_o [+ p_o ⊙ c_t])           output gate
    h_t = o ⊙ tanh(c_t)

The bracketed terms are the optional peepholes of Gers & Schmidhuber (2000): a diagonal
connection from the cell to its gates, one parameter ``weight_peephole`` (3H,) = [p_i, p_f,
p_o]. Without peepholes the cell is exactly ``torch.nn.LSTM``'s. Textbook names: U_k the
rows of ``weight_ih`` for gate k, W_k those of ``weight_hh``, b_k = bias_ih_k + bias_hh_k.
"""

from __future__ import annotations

import torch

from rnnkit.cells.base import Cell


class LSTMCell(Cell):
    """LSTM step on states ``(h, c)``; ``peephole=True`` adds the diagonal peepholes."""

    gates = 4
    num_states = 2
    fold_bias_hh = True

    def __init__(self, peephole: bool = False):
        self.peephole = bool(peephole)
        self.native_mode = None if self.peephole else "LSTM"
        self.name = "lstm_peephole" if self.peephole else "lstm"

    def extra_param_shapes(self, hidden_size):
        return {"weight_peephole": (3 * hidden_size,)} if self.peephole else {}

    def step_forward(self, xw, state, weight_hh, bias_hh, *extra):
        h_prev, c_prev = state                              # (n, H) each
        a = torch.addmm(xw, h_prev, weight_hh.t())          # (n, 4H)
        if bias_hh is not None:
            a = a + bias_hh
        if not self.peephole:
            sig = a.sigmoid()                               # (n, 4H); its g block is unused
            i, f, _, o = sig.chunk(4, 1)
            g = a[:, 2 * a.shape[1] // 4: 3 * a.shape[1] // 4].tanh()
            c = f * c_prev + i * g                          # c_t = f ⊙ c_{t-1} + i ⊙ g
            tc = c.tanh()
            h = o * tc                                      # h_t = o ⊙ tanh(c_t)
            return (h, c), (h_prev, c_prev, sig, g, tc)
        (p,) = extra
        p_i, p_f, p_o = p.chunk(3)
        a_i, a_f, a_g, a_o = a.chunk(4, 1)
        i = (a_i + p_i * c_prev).sigmoid()
        f = (a_f + p_f * c_prev).sigmoid()
        g = a_g.tanh()
        c = f * c_prev + i * g
        o = (a_o + p_o * c).sigmoid()
        tc = c.tanh()
        h = o * tc
        sig = torch.cat([i, f, g, o], 1)                    # (n, 4H), g block unused
        return (h, c), (h_prev, c_prev, sig, g, tc, c)

    def step_backward(self, dstate, cache, weight_hh, *extra):
        dh, dc_next = dstate
        h_prev, c_prev, sig, g, tc = cache[:5]
        i, f, _, o = sig.chunk(4, 1)
        H = g.shape[1]
        do = dh * tc                                        # dL/do = dh ⊙ tanh(c)
        dc = dc_next + dh * o * (1 - tc * tc)               # dL/dc += dh ⊙ o ⊙ (1 − tanh²c)
        if self.peephole:
            (p,) = extra
            p_i, p_f, p_o = p.chunk(3)
            da_o = do * o * (1 - o)
            dc = dc + da_o * p_o                            # o sees c_t through p_o
        dgate = torch.cat([dc * g, dc * c_prev, dc * i, do], 1)  # dL/d(i, f, g, o)  (n, 4H)
        da = dgate * sig * (1 - sig)                        # σ' = σ(1 − σ) on i, f, o
        da[:, 2 * H:3 * H] = dgate[:, 2 * H:3 * H] * (1 - g * g)  # tanh' = 1 − g² on g
        dc_prev = dc * f                                    # dL/dc_{t-1} = dc ⊙ f
        if self.peephole:
            dc_prev = dc_prev + da[:, :H] * p_i + da[:, H:2 * H] * p_f
        dh_prev = da @ weight_hh                            # (n, H)
        return (dh_prev, dc_prev), da, da

    def param_backward(self, dhw, caches, *extra):
        (dweight_hh,) = super().param_backward(dhw, caches)
        if not self.peephole:
            return (dweight_hh,)
        H = dhw.shape[1] // 4
        c_prev = torch.cat([cache[1] for cache in caches])  # (N, H)
        c = torch.cat([cache[5] for cache in caches])       # (N, H)
        dp = torch.cat([(dhw[:, :H] * c_prev).sum(0),       # dL/dp_i = Σ da_i ⊙ c_{t-1}
                        (dhw[:, H:2 * H] * c_prev).sum(0),  # dL/dp_f = Σ da_f ⊙ c_{t-1}
                        (dhw[:, 3 * H:] * c).sum(0)])       # dL/dp_o = Σ da_o ⊙ c_t
        return dweight_hh, dp

    def __repr__(self):
        return f"LSTMCell(peephole={self.peephole})"

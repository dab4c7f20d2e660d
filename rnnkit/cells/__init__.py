"""Cells: the one-step equations and their hand-derived backward passes.

- :mod:`rnnkit.cells.elman` — Elman RNN (tanh, ReLU, sigmoid)
- :mod:`rnnkit.cells.lstm`  — LSTM, optional peepholes
- :mod:`rnnkit.cells.gru`   — GRU, reset gate after (PyTorch) or before (Cho et al.)
"""

from rnnkit.cells.base import Cell
from rnnkit.cells.elman import NONLINEARITIES, ElmanCell
from rnnkit.cells.gru import GRUCell, GRUResetBeforeCell
from rnnkit.cells.lstm import LSTMCell

CELL_KINDS = ("rnn", "lstm", "gru")


def make_cell(kind: str, *, nonlinearity: str = "tanh", peephole: bool = False,
              reset_after: bool = True) -> Cell:
    """The cell for ``kind`` in {"rnn", "lstm", "gru"} with its variant options."""
    if kind == "rnn":
        return ElmanCell(nonlinearity)
    if kind == "lstm":
        return LSTMCell(peephole=peephole)
    if kind == "gru":
        return GRUCell() if reset_after else GRUResetBeforeCell()
    raise ValueError(f"cell: expected one of {list(CELL_KINDS)}, got {kind!r}")


__all__ = ["Cell", "ElmanCell", "LSTMCell", "GRUCell", "GRUResetBeforeCell",
           "NONLINEARITIES", "CELL_KINDS", "make_cell"]

"""Cells: the one-step equations and their hand-derived backward passes.

The registry (:mod:`rnnkit.cells.registry`) is the one list of cells; each cell has its
own file:

- :mod:`rnnkit.cells.elman` — Elman RNN (tanh, ReLU, sigmoid; IRNN)
- :mod:`rnnkit.cells.lstm`  — LSTM, optional peepholes
- :mod:`rnnkit.cells.gru`   — GRU, reset gate after (PyTorch) or before (Cho et al.)
"""

from rnnkit.cells.base import Cell
from rnnkit.cells.elman import NONLINEARITIES, ElmanCell
from rnnkit.cells.gru import GRUCell, GRUResetBeforeCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.registry import (OPTION_HELP, REGISTRY, CellEntry, all_options, cell_names,
                                   cell_options_of, is_user_cell, make_cell, register,
                                   torch_twin)

__all__ = ["Cell", "ElmanCell", "LSTMCell", "GRUCell", "GRUResetBeforeCell",
           "NONLINEARITIES", "REGISTRY", "CellEntry", "OPTION_HELP", "register", "make_cell",
           "cell_names", "all_options", "cell_options_of", "is_user_cell", "torch_twin"]

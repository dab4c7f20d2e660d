"""Cells: the one-step equations and their hand-derived backward passes.

The registry (:mod:`rnnkit.cells.registry`) is the one list of cells; each cell has its
own file:

- :mod:`rnnkit.cells.elman`          — Elman RNN (tanh, ReLU, sigmoid; IRNN)
- :mod:`rnnkit.cells.lstm`           — LSTM, optional peepholes
- :mod:`rnnkit.cells.gru`            — GRU, reset gate after (PyTorch) or before (Cho et al.)
- :mod:`rnnkit.cells.indrnn`         — IndRNN (Li et al. 2018), a diagonal recurrence
- :mod:`rnnkit.cells.min_gru`, :mod:`rnnkit.cells.min_lstm` — minimal GRU/LSTM (Feng et al.
  2024), gates of x_t alone
- :mod:`rnnkit.cells.layernorm_lstm`, :mod:`rnnkit.cells.layernorm_gru` — layer-normalised
  LSTM and GRU (Ba, Kiros & Hinton 2016)
- :mod:`rnnkit.cells.dropout`        — zoneout and variational recurrent dropout, for any cell
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

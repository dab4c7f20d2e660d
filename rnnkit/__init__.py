"""rnnkit: recurrent neural networks on PyTorch — cells with hand-derived BPTT, drop-in layers.

>>> import torch, rnnkit
>>> lstm = rnnkit.LSTM(10, 20, num_layers=2)          # same arguments as torch.nn.LSTM
>>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10))
"""

import sys

from rnnkit.cli.launch import quiet_launcher

# `rnnkit train … --nproc N` (any launch option): the launcher's C++ notices are silenced.
# c10 reads TORCH_CPP_LOG_LEVEL once, when its library loads, and this is the earliest point
# the command runs — `python -m rnnkit` imports this package, which imports torch, before
# rnnkit/__main__.py — so the variable is set here, before the first torch import (else the
# rendezvous client prints a C++ stack trace per failed connection attempt). Every other
# use keeps the notices.
quiet_launcher(sys.argv)

from rnnkit.cells import cell_names, make_cell
from rnnkit.layers import BACKENDS, GRU, INIT_SCHEMES, LSTM, RNN, RecurrentStack, detach_state

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "RecurrentStack", "detach_state", "make_cell",
           "cell_names", "BACKENDS", "INIT_SCHEMES", "__version__"]

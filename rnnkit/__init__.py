"""rnnkit: recurrent neural networks on PyTorch — cells with hand-derived BPTT, drop-in layers.

>>> import torch, rnnkit
>>> lstm = rnnkit.LSTM(10, 20, num_layers=2)          # same arguments as torch.nn.LSTM
>>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10))
"""

from rnnkit.cells import cell_names, make_cell
from rnnkit.layers import BACKENDS, GRU, INIT_SCHEMES, LSTM, RNN, RecurrentStack, detach_state

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "RecurrentStack", "detach_state", "make_cell",
           "cell_names", "BACKENDS", "INIT_SCHEMES", "__version__"]

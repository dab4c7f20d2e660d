"""Layers: recurrent stacks over any cell, drop-in replacements for ``torch.nn``."""

from rnnkit.layers.init import INIT_SCHEMES
from rnnkit.layers.recurrent import (BACKENDS, GRU, LSTM, RNN, RecurrentStack, detach_state,
                                     length_mask, with_hidden)

__all__ = ["RNN", "LSTM", "GRU", "RecurrentStack", "BACKENDS", "INIT_SCHEMES", "detach_state",
           "length_mask", "with_hidden"]

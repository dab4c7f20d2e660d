"""The piece the supervised models share: embedded tokens through a (bi)directional rnnkit
recurrent stack, masked for variable lengths.

Shapes: T time, B batch, E embedding, H hidden per direction, D directions, L layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.special import PAD_ID, UNK_ID
from rnnkit.layers import RecurrentStack
from rnnkit.models.lm import embedding_dropout


def recurrent_layer(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, *,
                    cell_options: dict | None = None, bidirectional: bool = False,
                    dropout: float = 0.0, backend: str = "auto") -> nn.Module:
    """A recurrent stack of the registered cell ``cell``: input (T, B, I) -> outputs
    (T, B, D*H), final states (L*D, B, H) (a tuple (h, c, …) for a cell of several
    states)."""
    return RecurrentStack(input_size, hidden_size, num_layers, bidirectional=bidirectional,
                          dropout=dropout if num_layers > 1 else 0.0, backend=backend,
                          cell=cell, cell_options=cell_options)


def embedding(vocab_size: int, size: int, init: float = 0.0) -> nn.Embedding:
    """An embedding (V, size) whose row ``<pad>`` is zero and stays so; ``init`` > 0 draws
    the other rows from U(-init, init) instead of PyTorch's N(0, 1)."""
    table = nn.Embedding(vocab_size, size, padding_idx=PAD_ID)
    if init:
        with torch.no_grad():
            table.weight.uniform_(-init, init)
            table.weight[PAD_ID].zero_()
    return table


class RecurrentEncoder(nn.Module):
    """Token ids -> embedding -> dropout -> recurrent stack.

    ``forward(tokens (T, B), lengths (B,), extra (T, B, X) | None)`` returns
    ``outputs (T, B, D*H)`` (zero past each length) and the final hidden states
    ``h_n (L*D, B, H)`` (an LSTM's h, not c), each at its example's own last token.
    In training, ``word_dropout`` replaces tokens by ``<unk>`` (id 1) with that
    probability, so that the ``<unk>`` vector learns what unseen words look like;
    ``embedding_dropout`` drops whole word types; ``dropout`` applies to the embedded input
    and between layers. ``embedding_init`` > 0 draws the embeddings from U(-x, x) instead
    of PyTorch's N(0, 1) (which Adam moves slowly; 0.25 trains much faster for a
    classifier). ``extra`` features (e.g. a character encoding of each word) are concatenated to the
    embeddings.
    """

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int,
                 num_layers: int, *, cell: str = "lstm", cell_options: dict | None = None,
                 bidirectional: bool = True,
                 dropout: float = 0.0, embedding_dropout: float = 0.0,
                 word_dropout: float = 0.0, embedding_init: float = 0.0, extra_size: int = 0,
                 backend: str = "auto"):
        super().__init__()
        self.embedding = embedding(vocab_size, embedding_size, embedding_init)
        self.dropout, self.embedding_dropout = dropout, embedding_dropout
        self.word_dropout = word_dropout
        self.rnn = recurrent_layer(cell, embedding_size + extra_size, hidden_size, num_layers,
                                   cell_options=cell_options, bidirectional=bidirectional, dropout=dropout,
                                   backend=backend)
        self.output_size = hidden_size * (2 if bidirectional else 1)

    def forward(self, tokens: Tensor, lengths: Tensor, extra: Tensor | None = None):
        """tokens (T, B), lengths (B,), extra (T, B, X) or None -> outputs (T, B, D*H),
        h_n (L*D, B, H); see the class docstring."""
        if self.training and self.word_dropout:
            drop = torch.rand(tokens.shape, device=tokens.device) < self.word_dropout
            tokens = tokens.masked_fill(drop & (tokens > UNK_ID), UNK_ID)
        weight = embedding_dropout(self.embedding.weight, self.embedding_dropout,
                                   self.training)
        x = F.embedding(tokens, weight, padding_idx=0)                    # (T, B, E)
        if extra is not None:
            x = torch.cat([x, extra], dim=-1)
        x = F.dropout(x, self.dropout, self.training)
        outputs, state = self.rnn(x, lengths=lengths.cpu())
        h_n = state[0] if isinstance(state, tuple) else state             # (L*D, B, H)
        return outputs, h_n


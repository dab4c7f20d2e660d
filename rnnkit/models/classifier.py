"""Many-to-one: a sequence classifier.

    tokens (T, B) -> embedding -> (bi)directional recurrent stack -> outputs o_t (T, B, D*H)
                  -> pooling over the real steps of each example -> dropout -> W z + b -> (B, C)

Pooling (padding never takes part):

- ``final``: ``[→h_n; ←h_1]``, the last layer's final states (each example's own last token
  for the forward direction, its first token for the backward one);
- ``mean``: ``Σ_t o_t / n``; ``max``: ``max_t o_t`` per feature;
- ``attention``: ``a_t = softmax_t(v · tanh(W o_t + b))``, ``z = Σ_t a_t o_t``
  (learned attention pooling, Yang et al. 2016).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import (MAX_LAYERS, MAX_SIZE, MAX_VOCAB, bounded, backend_field, cell_field, cell_options_field, check_cell,
                           check_fields, derived, option)
from rnnkit.layers import length_mask
from rnnkit.models.encoder import RecurrentEncoder

POOLINGS = ("final", "mean", "max", "attention")


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of a :class:`SequenceClassifier` (saved as JSON with the model)."""

    vocab_size: int = derived()
    num_classes: int = derived()
    cell: str = cell_field("lstm")
    cell_options: dict = cell_options_field()
    embedding_size: int = option(300, "word embedding size")
    hidden_size: int = option(150, "hidden units per direction", flag="--hidden")
    num_layers: int = option(1, "recurrent layers", flag="--layers")
    bidirectional: bool = option(True, "one direction instead of two", flag="--unidirectional")
    pooling: str = option("max", "how the outputs of all steps become one vector",
                          choices=POOLINGS)
    dropout: float = option(0.5, "dropout on the embeddings, between layers and on the "
                            "pooled vector")
    embedding_dropout: float = option(0.0, "drop whole word types (Gal & Ghahramani 2016)")
    word_dropout: float = option(0.0, "replace training words by <unk> with this probability")
    embedding_init: float = option(0.25, "embeddings drawn from U(-x, x) (0: N(0, 1))")
    backend: str = backend_field()

    def __post_init__(self):
        check_cell(self)
        check_fields(self, [
            bounded("vocab_size", 3, MAX_VOCAB),
            bounded("num_classes", 2, MAX_VOCAB),
            bounded("embedding_size", 1, MAX_SIZE),
            bounded("hidden_size", 1, MAX_SIZE),
            bounded("num_layers", 1, MAX_LAYERS),
            ("pooling", lambda c: c.pooling in POOLINGS, f"one of {list(POOLINGS)}"),
            ("dropout", lambda c: 0 <= c.dropout < 1, "a number in [0, 1)"),
            ("embedding_dropout", lambda c: 0 <= c.embedding_dropout < 1, "a number in [0, 1)"),
            ("word_dropout", lambda c: 0 <= c.word_dropout < 1, "a number in [0, 1)"),
            ("embedding_init", lambda c: c.embedding_init >= 0, "a number >= 0"),
        ])

    def to_dict(self) -> dict:
        return asdict(self)


def pool(outputs: Tensor, lengths: Tensor, how: str, h_n: Tensor | None = None,
         num_directions: int = 1, attention: nn.Module | None = None) -> Tensor:
    """Pool (T, B, F) outputs over each example's real steps -> (B, F); see the module
    docstring. ``final`` uses ``h_n`` (L*D, B, H); ``attention`` a module (T, B, F) -> (T, B)
    of scores."""
    T = outputs.shape[0]
    mask = length_mask(lengths, T, outputs.device)                        # (T, B)
    if how == "final":
        return torch.cat(list(h_n[-num_directions:]), dim=-1)             # (B, D*H)
    if how == "mean":
        summed = (outputs * mask[..., None]).sum(0)
        return summed / lengths.to(outputs.device)[:, None].to(outputs.dtype)
    if how == "max":
        return outputs.masked_fill(~mask[..., None], float("-inf")).max(0).values
    scores = attention(outputs).masked_fill(~mask, float("-inf"))        # (T, B)
    weights = torch.softmax(scores, dim=0)
    return (weights[..., None] * outputs).sum(0)


class AttentionScores(nn.Module):
    """``v · tanh(W o_t + b)``: (T, B, F) -> (T, B)."""

    def __init__(self, size: int):
        super().__init__()
        self.proj = nn.Linear(size, size)
        self.v = nn.Linear(size, 1, bias=False)

    def forward(self, outputs: Tensor) -> Tensor:
        """(T, B, F) -> unnormalised scores (T, B)."""
        return self.v(torch.tanh(self.proj(outputs))).squeeze(-1)


class SequenceClassifier(nn.Module):
    """``P(class | tokens)``; see the module docstring."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        self.encoder = RecurrentEncoder(c.vocab_size, c.embedding_size, c.hidden_size,
                                        c.num_layers, cell=c.cell, cell_options=c.cell_options,
                                        bidirectional=c.bidirectional, dropout=c.dropout,
                                        embedding_dropout=c.embedding_dropout,
                                        word_dropout=c.word_dropout,
                                        embedding_init=c.embedding_init, backend=c.backend)
        size = self.encoder.output_size
        self.attention = AttentionScores(size) if c.pooling == "attention" else None
        self.output = nn.Linear(size, c.num_classes)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens (T, B), lengths (B,) -> logits (B, C)."""
        outputs, h_n = self.encoder(tokens, lengths)
        z = pool(outputs, lengths, self.config.pooling, h_n,
                 2 if self.config.bidirectional else 1, self.attention)
        return self.output(F.dropout(z, self.config.dropout, self.training))

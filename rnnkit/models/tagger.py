"""Many-to-many aligned: a sequence tagger (e.g. part of speech).

    word w_t -> [emb(w_t); char(w_t)] -> bidirectional recurrent stack -> o_t -> W o_t + b
                                                                           -> tag scores (T, B, C)

``char(w)`` (optional, ``char_hidden_size > 0``) is a character-level encoding of the word:
its characters through a bidirectional recurrent layer, the final states of both
directions concatenated (Ling et al. 2015; Plank et al. 2016). It gives a word never seen in
training a representation from its spelling (suffixes, capitals, digits, hyphens). Each
distinct word of a batch is encoded once. ``word_dropout`` replaces training words by
``<unk>`` with that probability, so the ``<unk>`` embedding is trained for the unknown
words seen later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import (MAX_LAYERS, MAX_SIZE, MAX_VOCAB, bounded, backend_field, cell_field, cell_options_field, check_cell,
                           check_fields, derived, option)
from rnnkit.models.encoder import RecurrentEncoder, embedding, recurrent_layer


@dataclass(frozen=True)
class TaggerConfig:
    """Architecture of a :class:`Tagger` (saved as JSON with the model)."""

    vocab_size: int = derived()
    num_tags: int = derived()
    char_vocab_size: int = derived(0)
    cell: str = cell_field("lstm")
    cell_options: dict = cell_options_field()
    embedding_size: int = option(100, "word embedding size")
    hidden_size: int = option(200, "hidden units per direction", flag="--hidden")
    num_layers: int = option(2, "recurrent layers", flag="--layers")
    char_embedding_size: int = option(32, "character embedding size")
    char_hidden_size: int = option(64, "character encoder units per direction (0: no "
                                   "character encoder)", flag="--char-hidden")
    dropout: float = option(0.33, "dropout")
    word_dropout: float = option(0.05, "replace training words by <unk> with this probability")
    embedding_init: float = option(0.0, "word and character embeddings drawn from U(-x, x) "
                                   "(0: N(0, 1))")
    backend: str = backend_field()

    def __post_init__(self):
        check_cell(self)
        check_fields(self, [
            bounded("vocab_size", 3, MAX_VOCAB),
            bounded("num_tags", 1, MAX_VOCAB),
            bounded("char_vocab_size", 0, MAX_VOCAB),
            bounded("embedding_size", 1, MAX_SIZE),
            bounded("hidden_size", 1, MAX_SIZE),
            bounded("num_layers", 1, MAX_LAYERS),
            bounded("char_embedding_size", 1, MAX_SIZE),
            bounded("char_hidden_size", 0, MAX_SIZE),
            ("dropout", lambda c: 0 <= c.dropout < 1, "a number in [0, 1)"),
            ("word_dropout", lambda c: 0 <= c.word_dropout < 1, "a number in [0, 1)"),
            ("embedding_init", lambda c: c.embedding_init >= 0, "a number >= 0"),
        ])
        if self.char_hidden_size and self.char_vocab_size < 3:
            raise ValueError("char_vocab_size: the character encoder needs a character "
                             f"vocabulary (>= 3), got {self.char_vocab_size}")

    def to_dict(self) -> dict:
        return asdict(self)


class CharEncoder(nn.Module):
    """Characters of N words -> (N, 2*H): final states of a bidirectional layer."""

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, cell: str,
                 backend: str = "auto", embedding_init: float = 0.0,
                 cell_options: dict | None = None):
        super().__init__()
        self.embedding = embedding(vocab_size, embedding_size, embedding_init)
        self.rnn = recurrent_layer(cell, embedding_size, hidden_size, bidirectional=True,
                                   cell_options=cell_options,
                                   backend=backend)

    def forward(self, chars: Tensor, lengths: Tensor) -> Tensor:
        """chars (Lc, N) character ids, lengths (N,) -> (N, 2H)."""
        _, state = self.rnn(self.embedding(chars), lengths=lengths.cpu())
        h_n = state[0] if isinstance(state, tuple) else state              # (2, N, H)
        return torch.cat([h_n[0], h_n[1]], dim=-1)


class Tagger(nn.Module):
    """Tag scores for every word; see the module docstring."""

    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.config = c = config
        self.chars = (CharEncoder(c.char_vocab_size, c.char_embedding_size, c.char_hidden_size,
                                  c.cell, c.backend, c.embedding_init, c.cell_options)
                      if c.char_hidden_size else None)
        self.encoder = RecurrentEncoder(c.vocab_size, c.embedding_size, c.hidden_size,
                                        c.num_layers, cell=c.cell,
                                        cell_options=c.cell_options, bidirectional=True,
                                        dropout=c.dropout, word_dropout=c.word_dropout,
                                        embedding_init=c.embedding_init,
                                        extra_size=2 * c.char_hidden_size,
                                        backend=c.backend)
        self.output = nn.Linear(self.encoder.output_size, c.num_tags)

    def forward(self, words: Tensor, lengths: Tensor, chars: Tensor | None = None,
                char_lengths: Tensor | None = None, word_index: Tensor | None = None) -> Tensor:
        """Tag scores (T, B, C).

        Args:
            words: (T, B) word ids; lengths: (B,) sentence lengths.
            chars, char_lengths: (Lc, N), (N,) the characters of the N distinct words of
                the batch; word_index: (T, B) which of the N each position holds (needed
                when the model has a character encoder).
        """
        extra = None
        if self.chars is not None:
            if chars is None or word_index is None:
                raise ValueError("chars: this tagger encodes characters; pass chars, "
                                 "char_lengths and word_index")
            extra = self.chars(chars, char_lengths)[word_index]            # (T, B, 2Hc)
        outputs, _ = self.encoder(words, lengths, extra)
        return self.output(F.dropout(outputs, self.config.dropout, self.training))

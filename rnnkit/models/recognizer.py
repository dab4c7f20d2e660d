"""Many-to-many unaligned: a CTC speech recogniser (Graves et al. 2006; Graves & Jaitly 2014).

    frames x_1..x_T (T, B, F) -> stack s frames (T/s, B, s*F) -> recurrent block 1
        -> [join pairs of steps (T/2s, B, 2*D*H) -> recurrent block k]... -> W o_t + b
        -> log p(unit | t) (T', B, V), unit 0 the CTC blank

Time subsampling, two kinds, both between layers: ``frame_stack`` s concatenates s
consecutive input frames into one step (the low frame rate of Sak et al. 2015 / Deep
Speech 2); each of the ``pyramid`` pyramidal steps concatenates the outputs of two
consecutive steps before the next recurrent layer (the pyramidal BiLSTM of Chan et al.
2016, "Listen, Attend and Spell"). The ``num_layers`` recurrent layers (any registered
cell, bidirectional by default) are split into ``pyramid + 1`` blocks, the reduction after
each of the first ``pyramid``. An utterance of T frames gives
``T' = ceil(ceil(T / s) / 2 ** pyramid)`` outputs; a batch is padded with zero frames
(the normalised mean), and each utterance's outputs are those it has alone.

The output layer gives log-probabilities over the units (``num_units``, the blank
included) for ``torch.nn.functional.ctc_loss``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import (MAX_LAYERS, MAX_SIZE, MAX_VOCAB, backend_field, bounded, cell_field,
                           cell_options_field, check_cell, check_fields, derived, option)
from rnnkit.models.encoder import recurrent_layer

BLANK_ID = 0          # the CTC blank: rnnkit's <pad> id, never a real unit


@dataclass(frozen=True)
class RecognizerConfig:
    """Architecture of a :class:`Recognizer` (saved as JSON with the model)."""

    input_size: int = derived()           # features per frame
    num_units: int = derived()            # output units, the blank (id 0) included
    cell: str = cell_field("lstm")
    cell_options: dict = cell_options_field()
    hidden_size: int = option(128, "hidden units per direction", flag="--hidden")
    num_layers: int = option(3, "recurrent layers", flag="--layers")
    bidirectional: bool = option(True, "one direction instead of two",
                                 flag="--unidirectional")
    frame_stack: int = option(2, "stack this many input frames into one step (time "
                              "subsampling before the first layer)")
    pyramid: int = option(1, "pyramidal steps: after each of the first this-many layers, "
                          "join pairs of consecutive steps (time halved each)")
    dropout: float = option(0.1, "dropout on the inputs of every recurrent block and the "
                            "output layer")
    backend: str = backend_field()

    def __post_init__(self):
        check_cell(self)
        check_fields(self, [
            bounded("input_size", 1, MAX_VOCAB),      # the data checks MAX_FEATURE_SIZE
            bounded("num_units", 2, MAX_VOCAB),
            bounded("hidden_size", 1, MAX_SIZE),
            bounded("num_layers", 1, MAX_LAYERS),
            bounded("frame_stack", 1, 16),
            bounded("pyramid", 0, 8),
            ("dropout", lambda c: 0 <= c.dropout < 1, "a number in [0, 1)"),
        ])
        if self.pyramid >= self.num_layers:
            raise ValueError(f"pyramid: expected fewer pyramidal steps than recurrent layers "
                             f"({self.num_layers}), got {self.pyramid}")

    @property
    def subsampling(self) -> int:
        """Input frames per output step."""
        return self.frame_stack * 2 ** self.pyramid

    def to_dict(self) -> dict:
        return asdict(self)


def output_lengths(lengths: Tensor, config: RecognizerConfig) -> Tensor:
    """Output steps of utterances of ``lengths`` frames: ceil(T / s), halved (rounding up)
    at each pyramidal step."""
    out = torch.div(lengths + config.frame_stack - 1, config.frame_stack, rounding_mode="floor")
    for _ in range(config.pyramid):
        out = torch.div(out + 1, 2, rounding_mode="floor")
    return out


def join_steps(x: Tensor, k: int) -> Tensor:
    """(T, B, X) -> (ceil(T / k), B, k*X): each k consecutive steps concatenated (zero steps
    added at the end to fill the last group)."""
    T, B, X = x.shape
    extra = -T % k
    if extra:
        x = torch.cat([x, x.new_zeros(extra, B, X)])
    return x.view(-1, k, B, X).transpose(1, 2).reshape(-1, B, k * X)


class Recognizer(nn.Module):
    """Per-step log-probabilities of the units; see the module docstring."""

    def __init__(self, config: RecognizerConfig):
        super().__init__()
        self.config = c = config
        D = 2 if c.bidirectional else 1
        per_block = [c.num_layers // (c.pyramid + 1)] * (c.pyramid + 1)
        for k in range(c.num_layers % (c.pyramid + 1)):   # the first blocks take the rest
            per_block[k] += 1
        sizes = [c.frame_stack * c.input_size] + [2 * D * c.hidden_size] * c.pyramid
        self.blocks = nn.ModuleList(
            recurrent_layer(c.cell, size, c.hidden_size, layers, cell_options=c.cell_options,
                            bidirectional=c.bidirectional, dropout=c.dropout,
                            backend=c.backend)
            for size, layers in zip(sizes, per_block))
        self.output = nn.Linear(D * c.hidden_size, c.num_units)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (T, B, F) zero-padded, lengths (B,) frames -> (log-probabilities
        (T', B, V), output lengths (B,))."""
        c = self.config
        x = join_steps(features, c.frame_stack)                             # (T/s, B, sF)
        lengths = torch.div(lengths.cpu() + c.frame_stack - 1, c.frame_stack,
                            rounding_mode="floor")
        for k, block in enumerate(self.blocks):
            if k:
                x = join_steps(x, 2)                                        # (T/2, B, 2DH)
                lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
            x = F.dropout(x, c.dropout, self.training)
            x, _ = block(x, lengths=lengths)                                # (T, B, DH)
        scores = self.output(F.dropout(x, c.dropout, self.training))        # (T', B, V)
        return scores.log_softmax(-1), lengths

"""Image captioning with soft attention over a feature map (Xu et al. 2015, "Show, attend
and tell"), one-to-many: an image in, a sentence out.

Encoder. Either a small convolutional network trained from scratch — ``conv_layers``
blocks of ``conv3x3 → batch norm → ReLU → max-pool 2×2``, the first with ``conv_channels``
channels, each next one with twice as many — whose last map of ``h × w`` positions is the
image's annotation vectors ``a_1..a_L`` (L = h·w); or feature vectors a vision model
computed beforehand (``feature_size`` > 0: the model reads them, (L, D) per image). Two
coordinate channels ``(x, y)`` in [−1, 1] are appended to the convolutional map, so that
the attended context says *where* as well as *what* (CoordConv, Liu et al. 2018); a
feature file's vectors are used as they are.

Decoder: the translator's attentional decoder (:mod:`rnnkit.models.seq2seq`) over the
memory ``m_j = a_j`` (D = the annotation size) with every position real (no padding):
its initial state is ``tanh(W_init · mean_j a_j)`` (Xu's initialisation; an LSTM's cell
starts at 0), and at step t, with decoder output ``s_t``:

    α_t = softmax_j(score(s_t, a_j))         additive or multiplicative attention
    z_t = Σ_j α_tj a_j                        the context (D)
    ã_t = tanh(W_c [z_t; s_t]),  p(y_t | y_<t, image) = softmax(W_o ã_t)

With ``input_feeding`` (on by default) ``ã_{t-1}`` enters the recurrence with the
previous word, as Xu's context does. The decoder's modules carry the translator's names
and its methods run them (``decode``, ``decode_step``), so that greedy and beam search of
:mod:`rnnkit.models.seq2seq` (``greedy_decode``, ``TranslationSearch(encoded=…)``) caption
an image unchanged. Ids: 0 ``<pad>``, 1 ``<unk>``, 2 ``<eos>`` (begin and end symbol).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from rnnkit.config import (MAX_LAYERS, MAX_SIZE, MAX_VOCAB, backend_field, bounded,
                           cell_field, cell_options_field, check_cell, check_fields, derived,
                           option)
from rnnkit.layers import with_hidden
from rnnkit.models.encoder import recurrent_layer
from rnnkit.models.seq2seq import ATTENTIONS, Attention, Seq2Seq
from rnnkit.special import PAD_ID

MAX_CONV_LAYERS = 8


@dataclass(frozen=True)
class CaptionerConfig:
    """Architecture of a :class:`Captioner` (saved as JSON in the model directory)."""

    vocab_size: int = derived()
    feature_size: int = derived(0)     # > 0: precomputed features of this size; 0: the CNN
    cell: str = cell_field("lstm")
    cell_options: dict = cell_options_field()
    conv_channels: int = option(32, "channels of the first convolution (doubled by each "
                                "next one)")
    conv_layers: int = option(3, "convolutional blocks (each halves the map's side)")
    embedding_size: int = option(128, "word embedding size")
    hidden_size: int = option(256, "decoder hidden units", flag="--hidden")
    decoder_layers: int = option(1, "decoder layers")
    attention: str = option("additive", "additive (Bahdanau) or multiplicative (Luong)",
                            choices=ATTENTIONS)
    input_feeding: bool = option(True, "do not feed the previous attentional vector to the "
                                 "decoder (one call of the recurrent stack per caption, "
                                 "faster)")
    dropout: float = option(0.2, "dropout")
    backend: str = backend_field()

    def __post_init__(self):
        check_cell(self)
        check_fields(self, [
            bounded("vocab_size", 3, MAX_VOCAB),
            ("feature_size", lambda c: 0 <= c.feature_size <= MAX_VOCAB,
             f"an int >= 0 and at most {MAX_VOCAB}"),    # a features file: MAX_SIZE
            bounded("conv_channels", 1, MAX_SIZE // 2 ** (MAX_CONV_LAYERS - 1)),
            bounded("conv_layers", 1, MAX_CONV_LAYERS),
            bounded("embedding_size", 1, MAX_SIZE),
            bounded("hidden_size", 1, MAX_SIZE),
            bounded("decoder_layers", 1, MAX_LAYERS),
            ("attention", lambda c: c.attention in ATTENTIONS, f"one of {list(ATTENTIONS)}"),
            ("dropout", lambda c: 0 <= c.dropout < 1, "a number in [0, 1)"),
        ])
        if self.input_feeding and self.cell_options.get("recurrent_dropout"):
            raise ValueError("recurrent_dropout: with input_feeding the decoder runs one step "
                             "per call, so one mask per sequence cannot hold; use zoneout")

    @property
    def annotation_size(self) -> int:
        """D: the size of each position's annotation vector (the attention's memory)."""
        if self.feature_size:
            return self.feature_size
        return self.conv_channels * 2 ** (self.conv_layers - 1) + 2      # + (x, y)

    def to_dict(self) -> dict:
        return asdict(self)


def conv_encoder(channels: int, layers: int) -> nn.Sequential:
    """``layers`` blocks conv3x3 → batch norm → ReLU → max-pool 2×2: images (B, 3, S, S)
    -> maps (B, C, S / 2^layers, S / 2^layers), C = channels · 2^(layers−1)."""
    blocks, width_in = [], 3
    for k in range(layers):
        width = channels * 2 ** k
        blocks += [nn.Conv2d(width_in, width, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        width_in = width
    return nn.Sequential(*blocks)


def with_coordinates(maps: Tensor) -> Tensor:
    """maps (B, C, h, w) -> (B, C + 2, h, w): the x and y of each position, in [−1, 1]."""
    B, _, h, w = maps.shape
    y = torch.linspace(-1, 1, h, device=maps.device, dtype=maps.dtype)
    x = torch.linspace(-1, 1, w, device=maps.device, dtype=maps.dtype)
    grid = torch.stack(torch.meshgrid(x, y, indexing="xy"))                # (2, h, w)
    return torch.cat([maps, grid.expand(B, -1, -1, -1)], dim=1)


def pixels(images: Tensor) -> Tensor:
    """uint8 images (B, 3, S, S) -> float (B, 3, S, S) in [−1, 1] (floats pass through)."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images


class Captioner(nn.Module):
    """Image encoder and the translator's attentional decoder; see the module docstring.

    ``forward(inputs, target_inputs (T, B)) -> logits (T, B, V)``, where inputs are images
    (B, 3, S, S) (uint8 or float in [−1, 1]) or, with ``feature_size``, features (B, L, D).
    """

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.config = c = config
        H, D = c.hidden_size, c.annotation_size
        self.cnn = None if c.feature_size else conv_encoder(c.conv_channels, c.conv_layers)
        self.bridge = nn.Linear(D, H)                                      # W_init
        self.target_embedding = nn.Embedding(c.vocab_size, c.embedding_size,
                                             padding_idx=PAD_ID)
        feed = H if c.input_feeding else 0
        self.decoder = recurrent_layer(c.cell, c.embedding_size + feed, H, c.decoder_layers,
                                       cell_options=c.cell_options, dropout=c.dropout,
                                       backend=c.backend)
        self.attention = Attention(c.attention, H, D)
        self.combine = nn.Linear(D + H, H, bias=False)                    # W_c
        self.output = nn.Linear(H, c.vocab_size)

    # -- encoder ----------------------------------------------------------------------------

    def annotations(self, inputs: Tensor) -> tuple[Tensor, tuple[int, int] | None]:
        """images (B, 3, S, S) or features (B, L, D) -> annotation vectors (L, B, D) and,
        for images, the (h, w) grid of the map (None for features)."""
        if self.cnn is None:
            return inputs.transpose(0, 1), None                            # (L, B, D)
        maps = with_coordinates(self.cnn(pixels(inputs)))                  # (B, D, h, w)
        B, D, h, w = maps.shape
        return maps.flatten(2).permute(2, 0, 1), (h, w)                    # (h·w, B, D)

    def encode(self, inputs: Tensor):
        """images or features (see :meth:`annotations`) -> memory (L, B, D), mask (L, B)
        (all True: every position is real), the decoder's initial state."""
        memory, _ = self.annotations(inputs)
        h0 = torch.tanh(self.bridge(memory.mean(0)))                       # (B, H)
        h0 = h0[None].expand(self.config.decoder_layers, -1, -1).contiguous()
        state = with_hidden(self.decoder.initial_state(h0.shape[1]), h0)
        mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        return memory, mask, state

    # -- decoder: the translator's, over the annotation vectors ------------------------------

    _attend = Seq2Seq._attend
    decode = Seq2Seq.decode
    decode_step = Seq2Seq.decode_step

    def forward(self, inputs: Tensor, target_inputs: Tensor) -> Tensor:
        """images (B, 3, S, S) or features (B, L, D), target inputs (T, B) (``<eos>``
        first as the begin symbol) -> logits (T, B, V)."""
        memory, mask, state = self.encode(inputs)
        logits, _, _, _ = self.decode(target_inputs, memory, mask, state)
        return logits

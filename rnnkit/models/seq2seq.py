"""Encoder–decoder with attention (Bahdanau et al. 2015; Luong et al. 2015).

A bidirectional encoder reads the source ``x_1..x_S`` into annotations
``m_j = [→h_j; ←h_j]`` (2H). The decoder is a recurrent stack over the target embeddings;
its initial state is ``tanh(W_b [→h_S; ←h_1])`` (Bahdanau's bridge; an LSTM's cell starts
at 0). At target step t with decoder output ``s_t``:

    score(s_t, m_j) = v · tanh(W_q s_t + W_k m_j)     additive (Bahdanau)
                    = s_t · (W m_j)                   multiplicative (Luong's "general")
    α_t = softmax_j(score(s_t, m_j))   (padding positions of the source get 0)
    c_t = Σ_j α_tj m_j                                (2H)
    ã_t = tanh(W_c [c_t; s_t])                        attentional vector (H)
    p(y_t | y_<t, x) = softmax(W_o ã_t)

With ``input_feeding`` (Luong's input feeding, which also gives Bahdanau's dependence of
the recurrence on the previous context) the decoder input at step t is
``[emb(y_{t-1}); ã_{t-1}]`` and the decoder runs step by step; without it the decoder
runs over the whole target in one call of the recurrent stack and attention is computed
for all steps at once — much faster to train, the usual choice on a CPU.

Ids: 0 ``<pad>``, 1 ``<unk>``, 2 ``<eos>`` in both vocabularies (rnnkit's tokenizers);
the decoder starts from ``<eos>`` as its begin symbol and a translation ends at ``<eos>``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.config import (MAX_LAYERS, MAX_SIZE, MAX_VOCAB, bounded, backend_field, cell_field, cell_options_field, check_cell,
                           check_fields, derived, option)
from rnnkit.layers import length_mask, with_hidden
from rnnkit.special import LINE_END_ID, PAD_ID
from rnnkit.models.encoder import RecurrentEncoder, recurrent_layer

ATTENTIONS = ("additive", "multiplicative")
BOS_ID = EOS_ID = LINE_END_ID           # <eos> begins and ends a target sentence


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Architecture of a :class:`Seq2Seq` model (saved as JSON in the model directory)."""

    source_vocab_size: int = derived()
    target_vocab_size: int = derived()
    cell: str = cell_field("gru")
    cell_options: dict = cell_options_field()
    embedding_size: int = option(256, "embedding size")
    hidden_size: int = option(256, "hidden units per encoder direction, and the decoder's",
                              flag="--hidden")
    encoder_layers: int = option(1, "encoder layers")
    decoder_layers: int = option(1, "decoder layers")
    attention: str = option("additive", "additive (Bahdanau) or multiplicative (Luong)",
                            choices=ATTENTIONS)
    input_feeding: bool = option(False, "feed the previous attentional vector to the decoder "
                                 "(a step-by-step decoder)")
    dropout: float = option(0.3, "dropout")
    tie_embeddings: bool = option(False, "share the decoder's input embedding and output "
                                  "layer")
    backend: str = backend_field()

    def __post_init__(self):
        check_cell(self)
        check_fields(self, [
            bounded("source_vocab_size", 3, MAX_VOCAB),
            bounded("target_vocab_size", 3, MAX_VOCAB),
            bounded("embedding_size", 1, MAX_SIZE),
            bounded("hidden_size", 1, MAX_SIZE),
            bounded("encoder_layers", 1, MAX_LAYERS),
            bounded("decoder_layers", 1, MAX_LAYERS),
            ("attention", lambda c: c.attention in ATTENTIONS, f"one of {list(ATTENTIONS)}"),
            ("dropout", lambda c: 0 <= c.dropout < 1, "a number in [0, 1)"),
        ])
        if self.tie_embeddings and self.embedding_size != self.hidden_size:
            raise ValueError(f"tie_embeddings: needs embedding_size == hidden_size, got "
                             f"{self.embedding_size} and {self.hidden_size}")
        if self.input_feeding and self.cell_options.get("recurrent_dropout"):
            raise ValueError("recurrent_dropout: with input_feeding the decoder runs one step "
                             "per call, so one mask per sequence cannot hold; use zoneout")

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    """Scores of queries (T, B, H) against memory (S, B, M); see the module docstring.

    ``keys(memory)`` precomputes the memory's side once per sentence; ``forward(query,
    keys, memory, mask)`` returns the contexts (T, B, M) and weights (T, B, S).
    """

    def __init__(self, kind: str, query_size: int, memory_size: int):
        super().__init__()
        self.kind = kind
        self.key = nn.Linear(memory_size, query_size, bias=False)         # W_k or W
        if kind == "additive":
            self.query = nn.Linear(query_size, query_size, bias=True)     # W_q
            self.v = nn.Linear(query_size, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """memory (S, B, M) -> its projection (S, B, H), computed once per sentence."""
        return self.key(memory)                                           # (S, B, H)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor):
        """query (T, B, H), keys (S, B, H), memory (S, B, M), mask (S, B) True at real
        source positions -> contexts (T, B, M), weights (T, B, S) (0 at padding)."""
        if self.kind == "additive":
            q = self.query(query)                                         # (T, B, H)
            e = torch.tanh(q.transpose(0, 1)[:, :, None] + keys.transpose(0, 1)[:, None])
            scores = self.v(e).squeeze(-1)                                # (B, T, S)
        else:
            scores = torch.bmm(query.transpose(0, 1), keys.permute(1, 2, 0))   # (B, T, S)
        scores = scores.masked_fill(~mask.t()[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)                           # (B, T, S)
        context = torch.bmm(weights, memory.transpose(0, 1))              # (B, T, M)
        return context.transpose(0, 1), weights.transpose(0, 1)


class Seq2Seq(nn.Module):
    """Bidirectional encoder, attentional decoder; see the module docstring."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        H = c.hidden_size
        self.encoder = RecurrentEncoder(c.source_vocab_size, c.embedding_size, H,
                                        c.encoder_layers, cell=c.cell,
                                        cell_options=c.cell_options, bidirectional=True,
                                        dropout=c.dropout, backend=c.backend)
        self.bridge = nn.Linear(2 * H, H)
        self.target_embedding = nn.Embedding(c.target_vocab_size, c.embedding_size,
                                             padding_idx=PAD_ID)
        feed = H if c.input_feeding else 0
        self.decoder = recurrent_layer(c.cell, c.embedding_size + feed, H, c.decoder_layers,
                                       cell_options=c.cell_options, dropout=c.dropout,
                                       backend=c.backend)
        self.attention = Attention(c.attention, H, 2 * H)
        self.combine = nn.Linear(3 * H, H, bias=False)                    # W_c
        self.output = nn.Linear(H, c.target_vocab_size)
        if c.tie_embeddings:
            self.output.weight = self.target_embedding.weight

    # -- encoder ----------------------------------------------------------------------------

    def encode(self, source: Tensor, lengths: Tensor):
        """source (S, B), lengths (B,) -> memory (S, B, 2H), mask (S, B), decoder state."""
        memory, h_n = self.encoder(source, lengths)                       # (S, B, 2H)
        top = h_n.view(self.config.encoder_layers, 2, *h_n.shape[1:])[-1]  # (2, B, H)
        h0 = torch.tanh(self.bridge(torch.cat([top[0], top[1]], dim=-1)))   # (B, H)
        h0 = h0[None].expand(self.config.decoder_layers, -1, -1).contiguous()
        state = with_hidden(self.decoder.initial_state(h0.shape[1]), h0)
        mask = length_mask(lengths, source.shape[0], source.device)     # (S, B)
        return memory, mask, state

    # -- decoder ----------------------------------------------------------------------------

    def _attend(self, s: Tensor, keys: Tensor, memory: Tensor, mask: Tensor):
        """decoder outputs (T, B, H) -> attentional vectors ã (T, B, H), weights (T, B, S)."""
        context, weights = self.attention(s, keys, memory, mask)
        attn = torch.tanh(self.combine(torch.cat([context, s], dim=-1)))
        return attn, weights

    def decode(self, inputs: Tensor, memory: Tensor, mask: Tensor, state,
               feed: Tensor | None = None, keys: Tensor | None = None):
        """Teacher-forced decoder over target inputs (T, B) (``<eos>`` first as the begin
        symbol): -> logits (T, B, V), attention weights (T, B, S), final state and
        attentional vector (the next step's feed). ``keys``: ``attention.keys(memory)``
        if already computed."""
        x = F.dropout(self.target_embedding(inputs), self.config.dropout, self.training)
        if keys is None:
            keys = self.attention.keys(memory)
        if not self.config.input_feeding:
            s, state = self.decoder(x, state)                             # (T, B, H)
            attn, weights = self._attend(s, keys, memory, mask)
        else:
            if feed is None:
                feed = x.new_zeros(x.shape[1], self.config.hidden_size)
            steps, all_weights = [], []
            for t in range(x.shape[0]):
                s, state = self.decoder(torch.cat([x[t], feed], -1)[None], state)
                a, w = self._attend(s, keys, memory, mask)
                feed = a[0]
                steps.append(a)
                all_weights.append(w)
            attn, weights = torch.cat(steps), torch.cat(all_weights)
        logits = self.output(F.dropout(attn, self.config.dropout, self.training))
        return logits, weights, state, attn[-1]

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, state, feed: Tensor | None, memory: Tensor,
                    keys: Tensor, mask: Tensor):
        """One decoder step for inference, through the decoder's ``step``: tokens (B,),
        feed (B, H) or None -> logits (B, V), attention weights (1, B, S), the new state,
        the attentional vector (B, H) (the next step's feed)."""
        x = self.target_embedding(tokens)                                 # (B, E)
        if self.config.input_feeding:
            feed = x.new_zeros(x.shape[0], self.config.hidden_size) if feed is None else feed
            x = torch.cat([x, feed], dim=-1)
        s, state = self.decoder.step(x, state)                            # (B, H)
        attn, weights = self._attend(s[None], keys, memory, mask)         # (1, B, H)
        return self.output(attn[0]), weights, state, attn[0]

    def forward(self, source: Tensor, source_lengths: Tensor, target_inputs: Tensor) -> Tensor:
        """source (S, B), lengths (B,), target inputs (T, B) -> logits (T, B, V)."""
        memory, mask, state = self.encode(source, source_lengths)
        logits, _, _, _ = self.decode(target_inputs, memory, mask, state)
        return logits


class TranslationSearch:
    """One encoded source sentence seen through rnnkit.generate's step protocol, so that
    :func:`rnnkit.generate.beam_search` translates it.

    The search state is ``(decoder state, feed (1, B, H), memory (S, B, 2H), keys, mask)``
    — every tensor with the hypotheses on dimension 1, so that reordering the beam reorders
    all of it. ``weights`` collects the attention of the last :meth:`step` (for pictures).
    """

    def __init__(self, model: Seq2Seq, source_ids: list[int] | None = None, *,
                 encoded: tuple | None = None):
        """``source_ids``: one sentence, encoded here; or ``encoded``: ``(memory (S, 1, M),
        mask (S, 1), decoder state)`` of one input the model encoded itself (an image:
        :mod:`rnnkit.models.captioner`, whose decoder is this one)."""
        self.model = model
        with torch.no_grad():
            if encoded is None:
                device = model.output.weight.device
                source = torch.tensor(source_ids, dtype=torch.long, device=device)[:, None]
                encoded = model.encode(source, torch.tensor([len(source_ids)]))
            memory, mask, state = encoded
            keys = model.attention.keys(memory)
        feed = memory.new_zeros(1, 1, model.config.hidden_size)
        self._start = (state, feed, memory, keys, mask)

    def initial_state(self, batch_size: int):
        """The search state after encoding the sentence (one hypothesis)."""
        if batch_size != 1:
            raise ValueError(f"batch_size: a TranslationSearch holds one sentence, got "
                             f"{batch_size}")
        return self._start

    @torch.no_grad()
    def step(self, tokens: Tensor, search_state):
        """tokens (k,) — the last token of each of k hypotheses — and their state ->
        log-probabilities (k, V) of the next token, new state."""
        state, feed, memory, keys, mask = search_state
        logits, self.weights, state, attn = self.model.decode_step(tokens, state, feed[0],
                                                                   memory, keys, mask)
        log_probs = torch.log_softmax(logits, dim=-1)                      # (B, V)
        return log_probs, (state, attn[None], memory, keys, mask)

    def prime(self, tokens: Tensor, search_state):
        """tokens (T, 1) (the begin symbol) -> log-probabilities (1, V) after them, state."""
        for t in range(tokens.shape[0]):
            log_probs, search_state = self.step(tokens[t], search_state)
        return log_probs, search_state


@torch.no_grad()
def greedy_translate(model: Seq2Seq, source: Tensor, lengths: Tensor, max_len: int, *,
                     weights: bool = True) -> tuple[list[list[int]], Tensor | None]:
    """Batched greedy decoding: source (S, B), lengths (B,) -> token ids per sentence
    (without ``<eos>``) and the attention weights (T, B, S) (None with ``weights=False``,
    which keeps nothing per step but the tokens)."""
    return greedy_decode(model, *model.encode(source, lengths), max_len, weights=weights)


@torch.no_grad()
def greedy_decode(model: Seq2Seq, memory: Tensor, mask: Tensor, state, max_len: int, *,
                  weights: bool = True) -> tuple[list[list[int]], Tensor | None]:
    """:func:`greedy_translate` from inputs already encoded: memory (S, B, M), mask (S, B),
    the decoder's initial state — of any model with this decoder (a captioner's images).
    -> token ids per input (without ``<eos>``), attention weights (T, B, S) or None."""
    keys = model.attention.keys(memory)
    B = memory.shape[1]
    tokens = torch.full((1, B), BOS_ID, dtype=torch.long, device=memory.device)
    feed, outputs, kept = None, [], []
    done = torch.zeros(B, dtype=torch.bool, device=memory.device)
    for _ in range(max_len):
        logits, w, state, feed = model.decode_step(tokens[0], state, feed, memory, keys, mask)
        tokens = logits.argmax(-1)[None]                                  # (1, B)
        outputs.append(tokens[0])
        if weights:
            kept.append(w)
        done |= tokens[0] == EOS_ID
        if bool(done.all()):
            break
    ids = torch.stack(outputs, 1).tolist()                                # (B, T)
    result = [row[:row.index(EOS_ID)] if EOS_ID in row else row for row in ids]
    return result, torch.cat(kept) if weights else None

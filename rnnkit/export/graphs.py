"""The graphs ``rnnkit export`` writes, as small ``nn.Module`` wrappers around a model.

Each wrapper's ``forward`` takes and returns plain tensors only (the recurrent states as
explicit tensors, one per layer and state), so that ``torch.export`` sees a fixed
signature, and each is built from rnnkit's own pieces:

- one step: :meth:`rnnkit.layers.RecurrentStack.step` (the language model's and the
  translator's decoder step), i.e. the input product and the cell's ``step_forward``;
- a whole sequence: :func:`scan_direction`, the input projection of all steps in one
  matrix product, then the cell's ``step_forward`` inside torch's ``scan`` higher-order
  operator (an ONNX ``Scan``), so the time axis stays dynamic and every cell
  — including one of a user's own, written in torch ops — exports without an ONNX
  operator of its own. Variable lengths are exact (rnnkit's invariant 4): a padded step
  keeps the state (``where(mask, new, old)``) and outputs zeros, so the forward direction's
  final state is the state at each example's last token, and the reverse direction (the
  sequence flipped) starts at each example's own last token.

Shapes: T time, B batch, V vocabulary, H hidden, L layers, D directions, S source length,
N distinct words of a tagger batch, Lc their longest spelling, C classes or tags.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch._higher_order_ops.scan import scan_op   # torch's scan HOP (ONNX Scan when exported)

from rnnkit.bptt import input_projection
from rnnkit.layers import RecurrentStack


@dataclass
class TensorSpec:
    """One input or output of a graph: its name, shape (ints and axis names such as "B")
    and dtype name ("int64", "float32", "bool")."""

    name: str
    shape: list
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Graph:
    """A graph to export: its file stem, the module, example arguments (tensors and tuples
    of tensors), ``dynamic``: for each input tensor in flat order, {dimension: axis name},
    and the specs of its inputs and outputs (flat, in the order of the module's arguments
    and results)."""

    name: str
    module: nn.Module
    example: tuple
    dynamic: list[dict[int, str]]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    summary: str = ""


# -- one direction of a recurrent stack over a whole sequence -------------------------------

def _scan(body, init: list[Tensor], xs: list[Tensor], params: list[Tensor]):
    """torch's ``scan`` operator on flat lists: ``body(*carry, *x_t, *params) -> (*carry,
    y_t)``; -> final carry (list), ys (T, …). The operator itself rather than the
    ``scan`` front end, which compiles the body with dynamo first: under ``torch.export``
    that doubles the tracing time, and the body here is plain tensor code with every
    tensor it reads passed in (``params``)."""
    out = scan_op(body, init, xs, tuple(params))
    return list(out[:len(init)]), out[len(init)]


def scan_direction(stack: RecurrentStack, index: int, x: Tensor, init: tuple[Tensor, ...],
                   mask: Tensor | None = None, reverse: bool = False):
    """Layer-direction ``index`` of ``stack`` over a sequence, in eval mode.

    Args:
        stack: the recurrent stack that owns the parameters.
        index: ``layer * D + direction``.
        x: (T, B, I) the layer's input; init: the cell's states, (B, H) each.
        mask: (T, B) bool, True at real steps (None: every step is real).
        reverse: walk time from the end (each example from its own last real step).

    Returns:
        outputs (T, B, H) (zeros at padded steps) and the final states, (B, H) each.
    """
    cell = stack.cell.for_mode(False)
    w_ih, w_hh, b_ih, b_hh, extra = stack.layer_params(index)
    T, B = x.shape[0], x.shape[1]
    xw = input_projection(cell, x.reshape(T * B, x.shape[2]), w_ih, b_ih, b_hh)
    xw = xw.reshape(T, B, xw.shape[1])                                  # (T, B, G*H)
    bias_hh = None if cell.fold_bias_hh else b_hh
    if mask is None:
        mask = torch.ones(T, B, dtype=torch.bool, device=x.device)
    if reverse:
        xw, mask = xw.flip(0), mask.flip(0)

    params = [t for t in (w_hh, bias_hh) if t is not None] + list(extra)
    has_w, has_b, k = w_hh is not None, bias_hh is not None, len(init)

    def body(*flat):                    # (*carry, xw_t, real_t, *params) -> (*carry, out_t)
        carry, (xw_t, real), rest = flat[:k], flat[k:k + 2], list(flat[k + 2:])
        w = rest.pop(0) if has_w else None
        b = rest.pop(0) if has_b else None
        new, _ = cell.step_forward(xw_t, tuple(carry), w, b, *rest)
        keep = real[:, None]
        kept = [torch.where(keep, s_new, s_old) for s_new, s_old in zip(new, carry)]
        return (*kept, torch.where(keep, new[0], torch.zeros_like(new[0])))

    final, outputs = _scan(body, list(init), [xw, mask], params)        # (T, B, H)
    if reverse:
        outputs = outputs.flip(0)
    return outputs, tuple(final)


def scan_stack(stack: RecurrentStack, x: Tensor, mask: Tensor | None = None,
               state: tuple[Tensor, ...] | None = None):
    """A whole (bi)directional stack in eval mode: x (T, B, I), mask (T, B) or None, state
    ``(h_0, …)`` each (L*D, B, H) or None (the cell's initial state) -> outputs
    (T, B, D*H) (zeros past each length) and final states, each (L*D, B, H)."""
    B, H, D = x.shape[1], stack.hidden_size, stack.num_directions
    cell = stack.cell
    finals: list[tuple[Tensor, ...]] = []
    for layer in range(stack.num_layers):
        outs = []
        for direction in range(D):
            index = layer * D + direction
            if state is None:
                init = cell.initial_state(B, H, dtype=x.dtype, device=x.device)
            else:
                init = tuple(s[index] for s in state)
            out, final = scan_direction(stack, index, x, init, mask, reverse=direction == 1)
            outs.append(out)
            finals.append(final)
        x = outs[0] if D == 1 else torch.cat(outs, 2)
    return x, tuple(torch.stack([f[k] for f in finals]) for k in range(cell.num_states))


def length_mask(lengths: Tensor, T) -> Tensor:
    """(B,) lengths -> (T, B) bool, True at real steps."""
    return torch.arange(T, device=lengths.device)[:, None] < lengths[None, :]


def _flat(state) -> list[Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _packed(parts: list[Tensor], k: int):
    return tuple(parts) if k > 1 else parts[0]


def _states_in(state_names: list[tuple[str, ...]], layer_dim: int, H: int, suffix: str = ""
               ) -> list[TensorSpec]:
    """State specs (layer_dim, B, H): one per layer k and state name n of
    ``state_names[k]``, named ``{n}_l{k}{suffix}``."""
    return [TensorSpec(f"{n}_l{k}{suffix}", [layer_dim, "B", H], "float32")
            for k, names in enumerate(state_names) for n in names]


# -- language model ---------------------------------------------------------------------

class LMStep(nn.Module):
    """One token per stream: tokens (B,) int64 and the states [and, for a conditioned
    model, its condition vector (1, B, C), which the state carries unchanged] ->
    log-probabilities (B, V) and the new states (each (1, B, H); an LSTM layer has h
    and c)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.arity = [layer.cell.num_states for layer in model.layers]

    def forward(self, tokens: Tensor, states: tuple[Tensor, ...]):
        state, i = [], 0
        for k in self.arity:
            state.append(_packed(list(states[i:i + k]), k))
            i += k
        state += list(states[i:])                       # the condition, if any
        log_probs, new = self.model.step(tokens, tuple(state))
        return (log_probs, *[t for s in new[:len(self.arity)] for t in _flat(s)])


class LMSequence(nn.Module):
    """A whole sequence: tokens (T, B) int64 and the initial states [and the condition
    vector (1, B, C)] -> log-probabilities (T, B, V) of each next token and the final
    states (each (1, B, H))."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.arity = [layer.cell.num_states for layer in model.layers]

    def forward(self, tokens: Tensor, states: tuple[Tensor, ...]):
        x = self.model.embedding(tokens)                                # (T, B, E)
        cfg = self.model.config
        if cfg.condition and cfg.condition_mode == "input":
            cond = states[-1]                                           # (1, B, C)
            x = torch.cat([x, cond.expand(x.shape[0], -1, -1)], dim=-1)
        finals, i = [], 0
        for layer, k in zip(self.model.layers, self.arity):
            x, final = scan_stack(layer, x, None, tuple(states[i:i + k]))
            finals.extend(final)
            i += k
        return (self.model.log_probs(x), *finals)


class LMInitialState(nn.Module):
    """A conditioned model's first state: condition label ids (B,) int64 or vectors
    (B, C) -> the states (each (1, B, H)) and the condition vector (1, B, C)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, condition: Tensor):
        m, cfg = self.model, self.model.config
        c = m.condition_embedding(condition) if cfg.condition == "label" else condition
        B = c.shape[0]
        states = []
        for k, layer in enumerate(m.layers):
            init = _flat(layer.initial_state(B))
            if cfg.condition_mode == "init":
                init = [torch.tanh(m.condition_init[k](c))[None], *init[1:]]
            states.extend(init)
        return (*states, c[None])


def lm_graphs(model) -> list[Graph]:
    """The step and sequence graphs of a :class:`rnnkit.models.lm.LanguageModel` (and,
    for a conditioned model, the initial-state graph that turns a condition into the
    first state)."""
    cfg = model.config
    H, V, C = cfg.hidden_size, cfg.vocab_size, cfg.condition_dim
    names = [layer.cell.state_names for layer in model.layers]
    B, T = 2, 3
    states = tuple(0.1 * torch.randn(1, B, H) for _ in range(sum(len(n) for n in names)))
    state_specs = _states_in(names, 1, H)
    if cfg.condition:
        states += (0.1 * torch.randn(1, B, C),)
        state_specs.append(TensorSpec("condition_vector", [1, "B", C], "float32"))
    state_dyn = [{1: "B"}] * len(states)       # flat, after the tokens
    step = Graph(
        "step", LMStep(model), (torch.zeros(B, dtype=torch.long), states),
        [{0: "B"}, *state_dyn],
        [TensorSpec("tokens", ["B"], "int64"), *state_specs],
        [TensorSpec("log_probs", ["B", V], "float32"), *_states_in(names, 1, H, "_next")],
        "one token per stream -> next-token log-probabilities and the new states")
    sequence = Graph(
        "sequence", LMSequence(model), (torch.zeros(T, B, dtype=torch.long), states),
        [{0: "T", 1: "B"}, *state_dyn],
        [TensorSpec("tokens", ["T", "B"], "int64"), *state_specs],
        [TensorSpec("log_probs", ["T", "B", V], "float32"),
         *_states_in(names, 1, H, "_final")],
        "a whole sequence -> the log-probabilities after each token and the final states")
    if not cfg.condition:
        return [step, sequence]
    if cfg.condition == "label":
        example, given = torch.tensor([0, cfg.num_conditions - 1]), TensorSpec(
            "condition", ["B"], "int64")
    else:
        example, given = torch.randn(B, C), TensorSpec("condition", ["B", C], "float32")
    initial = Graph(
        "initial_state", LMInitialState(model), (example,), [{0: "B"}], [given],
        [*_states_in(names, 1, H), TensorSpec("condition_vector", [1, "B", C], "float32")],
        "a condition (label ids or vectors) -> the first states and the condition vector "
        "that the step and sequence graphs take")
    return [initial, step, sequence]


# -- classifier -------------------------------------------------------------------------

class ClassifierGraph(nn.Module):
    """tokens (T, B) int64, lengths (B,) int64 -> class log-probabilities (B, C)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, lengths: Tensor):
        from rnnkit.models.classifier import pool

        m, cfg = self.model, self.model.config
        mask = length_mask(lengths, tokens.shape[0])
        x = m.encoder.embedding(tokens)                                 # (T, B, E)
        outputs, final = scan_stack(m.encoder.rnn, x, mask)
        z = pool(outputs, lengths, cfg.pooling, final[0], 2 if cfg.bidirectional else 1,
                 m.attention)
        return torch.log_softmax(m.output(z), dim=-1)


def classifier_graphs(model) -> list[Graph]:
    """The one graph of a :class:`rnnkit.models.classifier.SequenceClassifier`."""
    C = model.config.num_classes
    T, B = 4, 2
    return [Graph(
        "classifier", ClassifierGraph(model),
        (torch.full((T, B), 3, dtype=torch.long), torch.tensor([T, T - 1])),
        [{0: "T", 1: "B"}, {0: "B"}],
        [TensorSpec("tokens", ["T", "B"], "int64"), TensorSpec("lengths", ["B"], "int64")],
        [TensorSpec("log_probs", ["B", C], "float32")],
        "token ids and lengths -> class log-probabilities")]


# -- tagger -----------------------------------------------------------------------------

class TaggerGraph(nn.Module):
    """words (T, B), lengths (B,) [, chars (Lc, N), char_lengths (N,), word_index (T, B)]
    -> tag scores (T, B, C) (the model's logits; argmax is the tag)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, words: Tensor, lengths: Tensor, chars: Tensor | None = None,
                char_lengths: Tensor | None = None, word_index: Tensor | None = None):
        m = self.model
        T = words.shape[0]
        x = m.encoder.embedding(words)                                  # (T, B, E)
        if m.chars is not None:
            char_mask = length_mask(char_lengths, chars.shape[0])
            _, final = scan_stack(m.chars.rnn, m.chars.embedding(chars), char_mask)
            h_n = final[0]                                              # (2, N, Hc)
            encoded = torch.cat([h_n[0], h_n[1]], dim=-1)               # (N, 2Hc)
            x = torch.cat([x, encoded[word_index]], dim=-1)
        outputs, _ = scan_stack(m.encoder.rnn, x, length_mask(lengths, T))
        return m.output(outputs)


def tagger_graphs(model) -> list[Graph]:
    """The one graph of a :class:`rnnkit.models.tagger.Tagger` (with the character inputs
    when the model has a character encoder)."""
    C = model.config.num_tags
    T, B, N, Lc = 4, 2, 3, 5
    example = [torch.full((T, B), 3, dtype=torch.long), torch.tensor([T, T - 1])]
    dynamic = [{0: "T", 1: "B"}, {0: "B"}]
    inputs = [TensorSpec("words", ["T", "B"], "int64"), TensorSpec("lengths", ["B"], "int64")]
    if model.chars is not None:
        example += [torch.full((Lc, N), 3, dtype=torch.long), torch.tensor([Lc, 2, 1]),
                    torch.tensor([[0, 1], [1, 2], [2, 0], [0, 0]])]
        dynamic += [{0: "Lc", 1: "N"}, {0: "N"}, {0: "T", 1: "B"}]
        inputs += [TensorSpec("chars", ["Lc", "N"], "int64"),
                   TensorSpec("char_lengths", ["N"], "int64"),
                   TensorSpec("word_index", ["T", "B"], "int64")]
    return [Graph("tagger", TaggerGraph(model), tuple(example), dynamic, inputs,
                  [TensorSpec("scores", ["T", "B", C], "float32")],
                  "word ids and lengths (and the characters of the distinct words) -> tag "
                  "scores")]


# -- translator -------------------------------------------------------------------------

class EncoderGraph(nn.Module):
    """source (S, B), lengths (B,) -> memory (S, B, 2H), keys (S, B, H), mask (S, B) bool,
    and the decoder's initial states, each (L_dec, B, H)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, source: Tensor, lengths: Tensor):
        m, cfg = self.model, self.model.config
        mask = length_mask(lengths, source.shape[0])                    # (S, B)
        memory, final = scan_stack(m.encoder.rnn, m.encoder.embedding(source), mask)
        h_n = final[0]                                                  # (L*2, B, H)
        top = h_n.reshape(cfg.encoder_layers, 2, h_n.shape[1], h_n.shape[2])[-1]
        h0 = torch.tanh(m.bridge(torch.cat([top[0], top[1]], dim=-1)))  # (B, H)
        h0 = h0[None].expand(cfg.decoder_layers, -1, -1)
        init = m.decoder.initial_state(h0.shape[1])
        states = (h0, *init[1:]) if isinstance(init, tuple) else (h0,)
        return (memory, m.attention.keys(memory), mask, *states)


class DecoderStepGraph(nn.Module):
    """One decoder step (what greedy decoding needs): tokens (B,), the decoder states
    (L_dec, B, H) each, memory (S, B, 2H), keys (S, B, H), mask (S, B) [, feed (B, H)] ->
    log-probabilities (B, V), attention weights (B, S), new states [, new feed (B, H)]."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.arity = model.decoder.cell.num_states
        self.feeding = model.config.input_feeding

    def forward(self, tokens: Tensor, states: tuple[Tensor, ...], memory: Tensor,
                keys: Tensor, mask: Tensor, feed: Tensor | None = None):
        state = _packed(list(states), self.arity)
        logits, weights, state, attn = self.model.decode_step(tokens, state, feed, memory,
                                                              keys, mask)
        out = (torch.log_softmax(logits, dim=-1), weights[0], *_flat(state))
        return out + ((attn,) if self.feeding else ())


def translator_graphs(model) -> list[Graph]:
    """The encoder and decoder-step graphs of a :class:`rnnkit.models.seq2seq.Seq2Seq`."""
    cfg = model.config
    H, V, L = cfg.hidden_size, cfg.target_vocab_size, cfg.decoder_layers
    names = model.decoder.cell.state_names
    S, B = 4, 2
    encoder = Graph(
        "encoder", EncoderGraph(model),
        (torch.full((S, B), 3, dtype=torch.long), torch.tensor([S, S - 1])),
        [{0: "S", 1: "B"}, {0: "B"}],
        [TensorSpec("source", ["S", "B"], "int64"), TensorSpec("lengths", ["B"], "int64")],
        [TensorSpec("memory", ["S", "B", 2 * H], "float32"),
         TensorSpec("keys", ["S", "B", H], "float32"), TensorSpec("mask", ["S", "B"], "bool"),
         *[TensorSpec(n, [L, "B", H], "float32") for n in names]],
        "source ids and lengths -> attention memory, keys, mask and the decoder's initial "
        "states")
    states = tuple(0.1 * torch.randn(L, B, H) for _ in names)
    example = [torch.full((B,), 2, dtype=torch.long), states, torch.randn(S, B, 2 * H),
               torch.randn(S, B, H),
               torch.tensor([[True] * B] * (S - 1) + [[True] + [False] * (B - 1)])]
    dynamic = [{0: "B"}] + [{1: "B"}] * len(names) + [{0: "S", 1: "B"}] * 3
    inputs = [TensorSpec("tokens", ["B"], "int64"),
              *[TensorSpec(n, [L, "B", H], "float32") for n in names],
              TensorSpec("memory", ["S", "B", 2 * H], "float32"),
              TensorSpec("keys", ["S", "B", H], "float32"),
              TensorSpec("mask", ["S", "B"], "bool")]
    outputs = [TensorSpec("log_probs", ["B", V], "float32"),
               TensorSpec("weights", ["B", "S"], "float32"),
               *[TensorSpec(f"{n}_next", [L, "B", H], "float32") for n in names]]
    if cfg.input_feeding:
        example.append(torch.zeros(B, H))
        dynamic.append({0: "B"})
        inputs.append(TensorSpec("feed", ["B", H], "float32"))
        outputs.append(TensorSpec("feed_next", ["B", H], "float32"))
    decoder = Graph("decoder_step", DecoderStepGraph(model), tuple(example), dynamic, inputs,
                    outputs, "one target token per sentence -> next-token log-probabilities, "
                    "attention weights, new states" + (" and feed" if cfg.input_feeding
                                                       else ""))
    return [encoder, decoder]


GRAPHS = {"lm": lm_graphs, "conditioned_lm": lm_graphs, "classifier": classifier_graphs,
          "tagger": tagger_graphs, "translator": translator_graphs}


def graphs_of(task: str, model) -> list[Graph]:
    """The graphs of a model of ``task`` (a key of :data:`GRAPHS`)."""
    if task not in GRAPHS:
        raise ValueError(f"export: {task!r} models are not exported; expected one of "
                         f"{sorted(GRAPHS)}")
    return GRAPHS[task](model)

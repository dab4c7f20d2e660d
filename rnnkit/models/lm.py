"""Recurrent language model: embedding → rnnkit recurrent layers → dropout → softmax head.

Regularisation, all off by default (Zaremba et al. 2014; Gal & Ghahramani 2016; Merity et
al. 2018):

- ``dropout``: on the embedding output, between layers and on the last layer's output;
  with ``locked_dropout`` the mask is drawn once per sequence and reused at every step
  (variational dropout) instead of anew for every element;
- ``embedding_dropout``: drops whole word types from the embedding matrix;
- ``weight_dropout``: DropConnect on every recurrent matrix (see ``rnnkit.layers``).

Conditioned generation (one-to-many): with ``condition="label"`` (an embedding per label)
or ``"vector"`` (a vector given by the user), the condition ``c`` either sets the initial
state of every layer, ``h_0 = tanh(W_k c + b_k)`` (``condition_mode="init"``; an LSTM's
cell starts at 0), or is concatenated to the input at every step
(``condition_mode="input"``). A conditioned model's state carries ``c`` along as its last
element (1, B, C), so generation, beam search and reordering need nothing new; build the
first state with ``initial_state(B, condition=…)`` or wrap the model with
:meth:`LanguageModel.conditioned_on`.

Maximum-entropy direct connections (RNNME, ``direct_size`` > 0; see
:mod:`rnnkit.models.direct`): hashed n-gram features of the last ``direct_order - 1`` inputs
add to every output score. The state then carries those inputs, (K-1, B) token ids, as its
last element, and :meth:`LanguageModel.forward` returns a
:class:`~rnnkit.models.direct.DirectHidden` (the hidden states with each position's history
hashes) that :meth:`~LanguageModel.nll` and :meth:`~LanguageModel.log_probs` take like the
hidden tensor.

Shapes: T time, B batch, V vocabulary, E embedding, H hidden. States are tuples over layers
of each layer's state — ``h`` (1, B, H), or ``(h, c)`` for an LSTM — batch on dimension 1
(then the condition (1, B, C) for a conditioned model, then the direct connections'
history (K-1, B) for a model that has them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells.registry import options_from_legacy_fields
from rnnkit.config import (MAX_LAYERS, MAX_SIZE, MAX_VOCAB, bounded, backend_field, cell_field, cell_options_field, check_cell,
                           check_fields, derived, option)
from rnnkit.layers import INIT_SCHEMES, RecurrentStack, detach_state, with_hidden
from rnnkit.models.direct import MAX_ORDER, DirectConnections, DirectHidden
from rnnkit.models.softmax import HEADS, AdaptiveSoftmax, ClassSoftmax, FullSoftmax, frequency_classes

CONDITIONS = ("", "label", "vector")
CONDITION_MODES = ("init", "input")
MAX_DIRECT = 1 << 30                    # direct-connection weights (4 GiB in float32)
DIRECT_ORDER = 3                        # the default n-gram order of direct connections


@dataclass(frozen=True)
class LMConfig:
    """Architecture of a :class:`LanguageModel` (saved as JSON in the model directory)."""

    vocab_size: int = derived()
    cell: str = cell_field("lstm")
    cell_options: dict = cell_options_field()
    embedding_size: int = option(0, "embedding size (0: same as --hidden)")
    hidden_size: int = option(200, "hidden units per layer", flag="--hidden")
    num_layers: int = option(2, "recurrent layers", flag="--layers")
    dropout: float = option(0.0, "dropout on the embeddings, between layers and on the output")
    locked_dropout: bool = option(False, "one dropout mask per sequence (variational)")
    embedding_dropout: float = option(0.0, "drop whole word types from the embedding")
    weight_dropout: float = option(0.0, "DropConnect on the recurrent weights")
    tie_weights: bool = option(False, "share the input and output embeddings")
    softmax: str = option("full", "the output layer", choices=HEADS)
    num_classes: int = option(0, "class softmax: how many classes (0: about sqrt(V))",
                              flag="--classes")
    adaptive_cutoffs: tuple[int, ...] = option(
        help="adaptive softmax: cutoffs, e.g. 2000,10000", flag="--cutoffs", factory=tuple)
    direct_size: int = option(0, "maximum-entropy direct connections (RNNME): how many "
                              "hashed n-gram weights (0: none)", flag="--direct-size")
    direct_order: int = option(DIRECT_ORDER, "direct connections: n-gram orders 1..K (K-1 words of "
                               "history; needs --direct-size)", flag="--direct-order")
    backend: str = backend_field()
    init: str = option("", "recurrent weight init (default: the cell's own)",
                       choices=INIT_SCHEMES)
    condition: str = derived("")        # "" | "label" | "vector": a conditioned model
    num_conditions: int = derived(0)    # label: how many labels
    condition_size: int = option(0, "label: its embedding size (0: --hidden); vector: set "
                                 "by the data")
    condition_mode: str = option("init", "how the condition enters: init (the initial "
                                 "state) or input (every step)", choices=CONDITION_MODES)

    def __post_init__(self):
        checks = [
            bounded("vocab_size", 2, MAX_VOCAB),
            bounded("hidden_size", 1, MAX_SIZE),
            bounded("embedding_size", 0, MAX_SIZE),
            bounded("num_layers", 1, MAX_LAYERS),
            ("softmax", lambda c: c.softmax in HEADS, f"one of {list(HEADS)}"),
            bounded("num_classes", 0, MAX_VOCAB),
            ("condition", lambda c: c.condition in CONDITIONS, f"one of {list(CONDITIONS)}"),
            ("condition_mode", lambda c: c.condition_mode in CONDITION_MODES,
             f"one of {list(CONDITION_MODES)}"),
            ("num_conditions", lambda c: c.condition != "label" or c.num_conditions >= 1,
             "an int >= 1 for condition='label'"),
            ("condition_size", lambda c: c.condition_size >= (c.condition == "vector"),
             "an int >= 1 for condition='vector' (else >= 0)"),
            bounded("condition_size", 0, MAX_SIZE),
            bounded("num_conditions", 0, MAX_VOCAB),
            bounded("direct_size", 0, MAX_DIRECT),
            ("direct_order", lambda c: 2 <= c.direct_order <= MAX_ORDER,
             f"an int in [2, {MAX_ORDER}]"),
        ]
        for name in ("dropout", "embedding_dropout", "weight_dropout"):
            checks.append((name, lambda c, name=name: 0 <= getattr(c, name) < 1,
                           "a number in [0, 1)"))
        check_fields(self, checks)
        check_cell(self)
        self.check_head_options(vars(self))
        if self.tie_weights and self.softmax == "adaptive":
            raise ValueError("tie_weights: not available with softmax='adaptive'")
        if self.tie_weights and self.embedding_size not in (0, self.hidden_size):
            raise ValueError(f"tie_weights: needs embedding_size == hidden_size, got "
                             f"{self.embedding_size} and {self.hidden_size}")

    @staticmethod
    def check_head_options(options) -> None:
        """An option of a head not chosen is refused: ``num_classes`` only for the class
        softmax, ``adaptive_cutoffs`` only for the adaptive one. ``options``: LMConfig
        fields by name (those absent at their defaults), so that the command line can check
        them before any data is read."""
        softmax = options.get("softmax", "full")
        if options.get("num_classes") and softmax != "class":
            raise ValueError(f"num_classes: only for softmax='class' (--classes needs --softmax "
                             f"class), got softmax={softmax!r}")
        if options.get("adaptive_cutoffs") and softmax != "adaptive":
            raise ValueError(f"adaptive_cutoffs: only for softmax='adaptive' (--cutoffs needs "
                             f"--softmax adaptive), got softmax={softmax!r}")
        order = options.get("direct_order", DIRECT_ORDER)
        if order != DIRECT_ORDER and not options.get("direct_size"):
            raise ValueError(f"direct_order: only with direct connections (--direct-order "
                             f"needs --direct-size), got direct_order={order!r}")

    @property
    def direct_bytes(self) -> int:
        """Memory of the direct connections' table (float32)."""
        return 4 * self.direct_size

    @property
    def embed_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def condition_dim(self) -> int:
        """Length of the condition vector the network sees (0: unconditioned)."""
        if not self.condition:
            return 0
        return self.condition_size or self.hidden_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adaptive_cutoffs"] = list(self.adaptive_cutoffs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        d = cls.legacy_fields(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown field(s) {unknown}")
        d["adaptive_cutoffs"] = tuple(d.get("adaptive_cutoffs", ()))
        return cls(**d)

    @classmethod
    def legacy_fields(cls, d: dict) -> dict:
        """A config.json of rnnkit 0.1 (cell options as the fields ``nonlinearity``,
        ``peephole``, ``reset_after``) in today's form: those in ``cell_options``."""
        d = dict(d)
        legacy = {k: d.pop(k) for k in ("nonlinearity", "peephole", "reset_after") if k in d}
        options = d.get("cell_options", {})
        if legacy and isinstance(d.get("cell", "lstm"), str) and isinstance(options, dict):
            options = {**options, **options_from_legacy_fields(d.get("cell", "lstm"), legacy)}
        d["cell_options"] = options               # anything but a table: check_cell says so
        return d


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Variational dropout on (T, B, H): one mask (1, B, H) for all time steps."""
    if not training or p == 0:
        return x
    mask = x.new_empty(1, x.shape[1], x.shape[2]).bernoulli_(1 - p) / (1 - p)
    return x * mask


def embedding_dropout(weight: Tensor, p: float, training: bool) -> Tensor:
    """Drop whole rows (word types) of an embedding matrix (V, E), rescaling the rest."""
    if not training or p == 0:
        return weight
    mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
    return weight * mask


class LanguageModel(nn.Module):
    """``P(w_t | w_<t)`` with a recurrent network; see the module docstring.

    Args:
        config: the architecture.
        counts: training frequency of every token id (V,), needed by ``softmax="class"``.
    """

    def __init__(self, config: LMConfig, counts: list[int] | None = None):
        super().__init__()
        self.config = config
        V, E, H, L = config.vocab_size, config.embed_dim, config.hidden_size, config.num_layers
        self.embedding = nn.Embedding(V, E)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        options = {"cell": config.cell, "cell_options": config.cell_options,
                   "backend": config.backend, "init": config.init or None,
                   "weight_dropout": config.weight_dropout}
        C = config.condition_dim
        first = E + (C if config.condition_mode == "input" else 0)
        self.layers = nn.ModuleList(RecurrentStack(first if k == 0 else H, H, **options)
                                    for k in range(L))
        if config.condition == "label":
            self.condition_embedding = nn.Embedding(config.num_conditions, C)
        if config.condition and config.condition_mode == "init":
            self.condition_init = nn.ModuleList(nn.Linear(C, H) for _ in range(L))
        tied = self.embedding.weight if config.tie_weights else None
        if config.softmax == "full":
            self.head = FullSoftmax(H, V, tied)
        elif config.softmax == "class":
            if counts is None or len(counts) != V:
                raise ValueError("softmax='class' needs the training counts of all "
                                 f"{V} token ids")
            C = config.num_classes or max(2, round(V ** 0.5))
            self.head = ClassSoftmax(H, frequency_classes(counts, C), tied)
        else:
            self.head = AdaptiveSoftmax(H, V, list(config.adaptive_cutoffs))
        self.direct = (DirectConnections(config.direct_size, config.direct_order)
                       if config.direct_size else None)

    def _dropout(self, x: Tensor) -> Tensor:
        if self.config.locked_dropout:
            return locked_dropout(x, self.config.dropout, self.training)
        return F.dropout(x, self.config.dropout, self.training)

    def initial_state(self, batch_size: int, condition: Tensor | None = None) -> tuple:
        """Zero states for ``batch_size`` streams; a conditioned model needs ``condition``:
        (B,) label ids or (B, C) vectors (one row broadcasts to all B)."""
        states = tuple(layer.initial_state(batch_size) for layer in self.layers)
        c = None
        if not self.config.condition:
            if condition is not None:
                raise ValueError("condition: this language model is not conditioned")
        else:
            c = self.condition_vector(condition, batch_size)               # (B, C)
            if self.config.condition_mode == "init":
                states = tuple(with_hidden(s, torch.tanh(self.condition_init[k](c))[None])
                               for k, s in enumerate(states))
            c = c[None]
        history = None if self.direct is None else \
            self.direct.initial_history(batch_size, self.embedding.weight.device)
        return self._join_state(states, c, history)

    def condition_vector(self, condition, batch_size: int) -> Tensor:
        """Check a condition and return its vector (B, C)."""
        cfg, p = self.config, self.embedding.weight
        if condition is None:
            raise ValueError(f"condition: this language model is conditioned on a "
                             f"{cfg.condition}; pass one")
        condition = torch.as_tensor(condition, device=p.device)
        if cfg.condition == "label":
            if condition.dim() > 1 or condition.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"condition: expected label ids (B,), got shape "
                                 f"{tuple(condition.shape)} of {condition.dtype}")
            if condition.numel() and not 0 <= int(condition.min()) <= int(condition.max()) \
                    < cfg.num_conditions:
                raise ValueError(f"condition: label ids must be in [0, {cfg.num_conditions})")
            c = self.condition_embedding(condition.long().reshape(-1))
        else:
            c = condition.to(p.dtype)
            if not bool(torch.isfinite(c).all()):
                raise ValueError("condition: the vector holds a non-finite number")
            if c.dim() == 1:
                c = c[None]
            if c.dim() != 2 or c.shape[1] != cfg.condition_dim:
                raise ValueError(f"condition: expected vectors of {cfg.condition_dim} numbers, "
                                 f"got shape {tuple(condition.shape)}")
        if c.shape[0] not in (1, batch_size):
            raise ValueError(f"condition: {c.shape[0]} rows for a batch of {batch_size}; "
                             f"expected 1 (shared) or {batch_size}")
        return c.expand(batch_size, -1) if c.shape[0] == 1 else c

    def conditioned_on(self, condition) -> "ConditionedModel":
        """This model with a fixed condition, for :mod:`rnnkit.generate`."""
        return ConditionedModel(self, condition)

    def _split_state(self, state) -> tuple[tuple, Tensor | None, Tensor | None]:
        """A state -> (the layers' states, the condition or None, the history or None)."""
        state = tuple(state)
        history = None
        if self.direct is not None:
            state, history = state[:-1], state[-1]
        if self.config.condition:
            return state[:-1], state[-1], history
        return state, None, history

    @staticmethod
    def _join_state(layers, cond: Tensor | None, history: Tensor | None) -> tuple:
        return tuple(layers) + tuple(t for t in (cond, history) if t is not None)

    def _direct_hidden(self, x: Tensor, tokens: Tensor, history: Tensor | None,
                       lengths: Tensor | None = None):
        """The last layer's output x (T, B, H) of inputs ``tokens`` (T, B), with their
        direct-connection hashes for a model that has them, and the history to carry."""
        if self.direct is None:
            return x, None
        hashes, new_history = self.direct.hashes(tokens, history, lengths)
        return DirectHidden(x, hashes), new_history

    def forward(self, tokens: Tensor, state: tuple | None = None,
                lengths: Tensor | None = None) -> tuple[Tensor | DirectHidden, tuple]:
        """Hidden states of the last layer.

        Args:
            tokens: (T, B) token ids; state: from :meth:`initial_state` or a previous call
                (required for a conditioned model: it carries the condition);
            lengths: (B,) optional lengths of a padded batch.

        Returns:
            hidden (T, B, H) after output dropout (with direct connections, a
            :class:`DirectHidden` that also holds each position's history hashes), and the
            new state.
        """
        if state is None:
            state = self.initial_state(tokens.shape[1])
        state, cond, history = self._split_state(state)
        weight = embedding_dropout(self.embedding.weight, self.config.embedding_dropout,
                                   self.training)
        x = self._dropout(F.embedding(tokens, weight))                  # (T, B, E)
        if cond is not None and self.config.condition_mode == "input":
            x = torch.cat([x, cond.expand(x.shape[0], -1, -1)], dim=-1)  # (T, B, E+C)
        new_state = []
        for layer, layer_state in zip(self.layers, state):
            x, s = layer(x, layer_state, lengths=lengths)
            new_state.append(s)
            x = self._dropout(x)                                        # between layers, output
        x, history = self._direct_hidden(x, tokens, history, lengths)
        return x, self._join_state(new_state, cond, history)

    def _head_inputs(self, hidden: Tensor | DirectHidden):
        """(..., H) -> the (N, H) rows for the head and their direct features (or None)."""
        if isinstance(hidden, DirectHidden):
            rows, hashes = hidden.flat()
            return rows, self.direct.features(hashes)
        return hidden.reshape(-1, hidden.shape[-1]), None

    def nll(self, hidden: Tensor | DirectHidden, targets: Tensor) -> Tensor:
        """(T, B, H), (T, B) -> (T, B) negative log-likelihood of each target, in nats."""
        rows, direct = self._head_inputs(hidden)
        return self.head.nll(rows, targets.reshape(-1), direct=direct).view(targets.shape)

    def log_probs(self, hidden: Tensor | DirectHidden) -> Tensor:
        """(..., H) -> (..., V) log-distribution of the next token."""
        rows, direct = self._head_inputs(hidden)
        flat = self.head.log_probs(rows, direct=direct)
        return flat.view(*hidden.shape[:-1], -1)

    # -- the generation protocol (rnnkit.generate) ------------------------------------------

    @torch.no_grad()
    def step(self, tokens: Tensor, state) -> tuple[Tensor, tuple]:
        """One token per stream: (B,) -> log-probabilities (B, V) of the next, new state.

        The inference path of generation: each layer's :meth:`RecurrentStack.step` — one
        input product and the cell's ``step_forward``, no unrolling machinery.
        """
        if state is None:
            state = self.initial_state(tokens.shape[0])
        state, cond, history = self._split_state(state)
        x = self.embedding.weight[tokens]                                # (B, E)
        if cond is not None and self.config.condition_mode == "input":
            x = torch.cat([x, cond[0]], dim=-1)
        new_state = []
        for layer, layer_state in zip(self.layers, state):
            x, s = layer.step(x, layer_state)                               # (B, H)
            new_state.append(s)
        x, history = self._direct_hidden(x[None], tokens[None], history)
        return self.log_probs(x[0]), self._join_state(new_state, cond, history)

    @torch.no_grad()
    def prime(self, tokens: Tensor, state) -> tuple[Tensor, tuple]:
        """A whole prompt (T, B) in one call -> log-probabilities (B, V) after it, state."""
        hidden, state = self(tokens, state)
        return self.log_probs(hidden[-1]), state


class ConditionedModel:
    """A conditioned :class:`LanguageModel` with its condition fixed: the step protocol of
    :mod:`rnnkit.generate` (``initial_state(B)``, ``prime``, ``step``).

    ``condition``: one label id, or one vector (C,).
    """

    def __init__(self, model: LanguageModel, condition):
        if isinstance(condition, int):
            condition = torch.tensor([condition])
        condition = torch.as_tensor(condition)
        model.condition_vector(condition, 1)                               # checks it
        self.model, self.condition = model, condition

    def initial_state(self, batch_size: int) -> tuple:
        """The model's initial state for ``batch_size`` streams, all with the condition."""
        return self.model.initial_state(batch_size, condition=self.condition)

    def step(self, tokens: Tensor, state):
        """tokens (B,) -> log-probabilities (B, V), new state (see LanguageModel.step)."""
        return self.model.step(tokens, state)

    def prime(self, tokens: Tensor, state):
        """tokens (T, B) -> log-probabilities (B, V) after them, new state."""
        return self.model.prime(tokens, state)


__all__ = ["LMConfig", "LanguageModel", "ConditionedModel", "locked_dropout", "embedding_dropout", "detach_state"]

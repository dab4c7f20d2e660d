"""What each endpoint computes, on a loaded model, in plain synchronous Python.

The HTTP layer (:mod:`rnnkit.serve.app`) runs these functions in worker threads; each one
is the library's own path for its task — the same encoders, bounds and model calls as
``rnnkit score``, ``predict``, ``translate``, ``generate`` and ``activations`` — fed from a
request instead of a file. ``ValueError`` means bad input; its message names the field.

Generation streams: :func:`generate_events` drives :func:`rnnkit.tasks.lm.generate_from`
(so the text is exactly what ``rnnkit generate`` gives for the same options and seed) and
watches it through two thin views — of the model, which keeps the last next-token
distribution it returned, and of the tokenizer, which notices each new token as the
generator decodes it — to report every token with the distribution it was drawn from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from rnnkit.config import MAX_INPUT_TOKENS, MAX_WORD_CHARS
from rnnkit.serve.models import ServedModel
from rnnkit.tasks.common import encode_bounded


# -- language model: scores ---------------------------------------------------------------

@torch.no_grad()
def score_texts(entry: ServedModel, lines: list[str], batch_size: int = 32) -> list[dict]:
    """Log-probability of each line on its own, as ``rnnkit score`` scores the lines of a
    file (:func:`rnnkit.tasks.lm.score_texts`): one dict per line with line (1-based),
    logprob (natural log), log10prob, tokens (the closing line end included), ppl, text, and
    unknown (how many of its tokens are ``<unk>``)."""
    from rnnkit.tasks.lm import score_texts as lm_score_texts

    tokenizer = entry.tokenizers["tokenizer"]
    rows = lm_score_texts(entry.model, tokenizer, lines, batch_size=batch_size)
    for row in rows:
        row["unknown"] = tokenizer.encode_line(row["text"]).count(tokenizer.unk_id)
    return rows


# -- classifier, tagger, translator -------------------------------------------------------

def _device(entry: ServedModel) -> torch.device:
    return next(entry.model.parameters()).device


@torch.no_grad()
def classify_texts(entry: ServedModel, texts: list[str]) -> list[dict]:
    """Per text: {"label", "probabilities": {label: p}, "text"}, as
    :func:`rnnkit.tasks.classifier.predict_file` labels the lines of a file (the model's
    ``lowercase``, its word or BPE encoding, :func:`class_probabilities`)."""
    from rnnkit.tasks.classifier import class_probabilities

    tokenizer, config = entry.tokenizers["tokenizer"], entry.config
    for k, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"texts[{k}]: expected some text, got {text!r}")

    def encode(batch):                      # as classifier._encode encodes a file's lines
        if tokenizer.level == "bpe":
            return [ids[:-1] for ids in tokenizer.encode_lines(batch)]      # no line end
        return [tokenizer.encode_words(t.split()) for t in batch]

    lowered = [t.lower() if config["lowercase"] else t for t in texts]
    ids = encode_bounded(lowered, encode, lambda k: f"texts[{k}]", "a classifier")
    probs = class_probabilities(entry.model, ids, _device(entry))
    labels = config["labels"]
    return [{"label": labels[int(p.argmax())],
             "probabilities": {label: float(q) for label, q in zip(labels, p)},
             "text": text} for text, p in zip(texts, probs)]


@torch.no_grad()
def tag_sentences(entry: ServedModel, sentences: list[list[str]]) -> list[dict]:
    """Per sentence (a list of words): {"words", "tags"}, by
    :func:`rnnkit.tasks.tagger.encode_sentences` and :func:`predict_tags` as ``rnnkit
    predict`` tags a file."""
    from rnnkit.data.labelled import TaggedSentence
    from rnnkit.tasks.tagger import encode_sentences, predict_tags

    for k, words in enumerate(sentences):
        if not words:
            raise ValueError(f"sentences[{k}]: expected at least one word")
        if len(words) > MAX_INPUT_TOKENS:
            raise ValueError(f"sentences[{k}]: {len(words):,} words; a tagger reads a sentence "
                             f"whole, at most {MAX_INPUT_TOKENS:,} words: split it")
        for j, word in enumerate(words):
            if not word or any(c.isspace() for c in word):
                raise ValueError(f"sentences[{k}][{j}]: a word is non-empty and holds no "
                                 f"whitespace, got {word!r}")
            if len(word) > MAX_WORD_CHARS:
                raise ValueError(f"sentences[{k}][{j}]: a word of {len(word):,} characters; "
                                 f"a tagger reads words of at most {MAX_WORD_CHARS:,}")
    tagged = [TaggedSentence(words=list(w), tags=[None] * len(w),
                             word_lines=list(range(len(w))), line=k + 1)
              for k, w in enumerate(sentences)]
    data = encode_sentences(tagged, entry.tokenizers["words"], None, "sentences")
    predicted, _, _ = predict_tags(entry.model, data, entry.tokenizers["chars"],
                                   _device(entry))
    tags = entry.config["tags"]
    return [{"words": list(w), "tags": [tags[i] for i in row]}
            for w, row in zip(sentences, predicted)]


@torch.no_grad()
def translate_texts(entry: ServedModel, texts: list[str], *, beam: int = 5,
                    length_penalty: float = 1.0) -> list[str]:
    """Translations of the sentences, as :func:`rnnkit.tasks.translator.translate_lines`
    gives them (``beam`` 1: greedy)."""
    from rnnkit.tasks.translator import translate_ids

    for k, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"texts[{k}]: expected a sentence, got {text!r}")
    source = entry.tokenizers["source"]
    ids = encode_bounded(texts, source.encode_lines, lambda k: f"texts[{k}]", "a translator")
    return translate_ids(entry.model, ids, entry.tokenizers["target"], beam=beam,
                         length_penalty=length_penalty)


# -- language model: activations (the playground's colouring) -----------------------------

def _activation_model(entry: ServedModel):
    """A private copy of the model for :func:`rnnkit.diagnostics.activations.activations`,
    which switches the layers to the hand-BPTT engine while it reads them: the copy keeps
    that switch away from requests running on the shared model at the same time."""
    with entry.lock:
        if entry.activation_model is None:
            entry.activation_model = copy.deepcopy(entry.model).eval()
    return entry.activation_model


def available_kinds(entry: ServedModel) -> list[str]:
    """The activation kinds ("hidden", "cell", gate names) of a language model's cell, read
    from the shared model: call it before the model serves requests (``create_app`` does)."""
    from rnnkit.diagnostics.activations import KINDS, activations

    model = entry.model
    kinds = []
    with entry.activation_lock:
        for kind in KINDS:
            try:
                activations(model, [entry.tokenizers["tokenizer"].line_end_id], kind=kind)
            except ValueError:
                continue
            kinds.append(kind)
    return kinds


def activation_view(entry: ServedModel, text: str, *, unit: int = 0, layer: int = -1,
                    kind: str = "hidden") -> dict:
    """One unit's activation at every character of ``text``, coloured as ``rnnkit
    activations`` colours its page (blue negative, white 0, red positive, scaled by the
    largest magnitude). A character model only, as the diagnostics; a text longer than
    ``MAX_CHARS`` is cut there, and said so.

    Returns {"text", "values", "colours", "scale", "range", "units", "layers", "layer",
    "kind", "unit", "truncated", "note"}.
    """
    from rnnkit.diagnostics.activations import activation_input, activations, colour

    text, ids, note = activation_input(entry.tokenizers["tokenizer"], text)
    model = _activation_model(entry)
    with entry.activation_lock:
        acts = activations(model, ids, layer=layer, kind=kind)                 # (T, H)
    H, L = acts.shape[1], len(model.layers)
    if not 0 <= unit < H:
        raise ValueError(f"unit: expected 0..{H - 1} ({H} units), got {unit}")
    values = acts[:, unit].tolist()
    scale = max(abs(v) for v in values)
    return {"text": text, "values": values, "colours": [colour(v, scale) for v in values],
            "scale": scale, "range": [min(values), max(values)], "units": H, "layers": L,
            "layer": layer % L, "kind": kind, "unit": unit, "truncated": bool(note),
            "note": note}


# -- language model: streamed generation ---------------------------------------------------

class GenerationCancelled(Exception):
    """The client went away: generation stops at the next token."""


class _Recording:
    """A step model (see :mod:`rnnkit.generate`) seen through: it keeps the last next-token
    distribution (1, V) it returned and counts its calls."""

    def __init__(self, model):
        self.model, self.calls, self.log_probs = model, 0, None

    def initial_state(self, batch_size: int):
        """The model's initial state."""
        return self.model.initial_state(batch_size)

    def prime(self, tokens, state):
        """The model's ``prime``, its distribution kept."""
        return self._keep(*self.model.prime(tokens, state))

    def step(self, tokens, state):
        """The model's ``step``, its distribution kept."""
        return self._keep(*self.model.step(tokens, state))

    def _keep(self, log_probs, state):
        self.calls += 1
        self.log_probs = log_probs
        return log_probs, state


class _Watching:
    """A tokenizer seen through: :func:`rnnkit.generate.generate_text` encodes the prompt
    once, then decodes the prompt and all tokens so far after each new token; the k-th
    decode past the prompt reports token k (``on_token(k, id)``) before its text settles."""

    def __init__(self, tokenizer, on_token: Callable[[int, int], None]):
        self.tokenizer, self.on_token = tokenizer, on_token
        self.prime_length, self.seen = 0, 0
        self.eos_id = tokenizer.eos_id

    def encode(self, text: str, *args, **kwargs) -> list[int]:
        """The prompt's ids (at most MAX_INPUT_TOKENS; an error names the field "prime")."""
        try:
            ids = list(self.tokenizer.encode(text, *args, **kwargs))
        except ValueError as error:        # without the hint for Python callers
            message = str(error).split(" (pass unknown_policy")[0]
            raise ValueError(f"prime: {message}") from None
        if len(ids) > MAX_INPUT_TOKENS:
            raise ValueError(f"prime: {len(ids):,} tokens; at most {MAX_INPUT_TOKENS:,}")
        self.prime_length = len(ids)
        return ids

    def decode(self, ids) -> str:
        """The tokenizer's decode; reports a token not seen before."""
        ids = list(ids)
        k = len(ids) - self.prime_length
        if k > self.seen:
            self.seen = k
            self.on_token(k, ids[-1])
        return self.tokenizer.decode(ids)


def step_model(entry: ServedModel, condition: str | None):
    """The step model that generates for ``entry``: the language model, or a conditioned
    one with its condition fixed (a label, or numbers "0.5,1,…")."""
    if entry.task == "conditioned_lm":
        from rnnkit.tasks.conditioned_lm import parse_condition

        if condition is None:
            raise ValueError(f"condition: {entry.name!r} is a conditioned model; give a label "
                             f"{entry.config.get('labels') or ''} or a vector".rstrip())
        return entry.model.conditioned_on(parse_condition(condition, entry.config))
    if condition is not None:
        raise ValueError(f"condition: {entry.name!r} is not a conditioned model")
    return entry.model


def distribution(log_probs: torch.Tensor, top: int, tokenizer, *, greedy: bool,
                 sampling: dict) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """(model probabilities (V,), sampling probabilities (V,), the ``top`` likeliest tokens
    as {"id", "token", "p", "p_sample"}) of a next-token distribution (1, V): ``p`` is the
    model's, ``p_sample`` what sampling draws from after :func:`rnnkit.generate.filter_logits`
    (greedy: 1 for the argmax)."""
    from rnnkit.generate import filter_logits

    probs = log_probs[0].double().exp()                                # (V,)
    if greedy:
        sample = torch.zeros_like(probs)
        sample[int(log_probs[0].argmax())] = 1.0
    else:
        sample = filter_logits(log_probs, **sampling)[0].double().exp()
    entries = []
    if top:
        p, index = probs.topk(min(top, probs.numel()))
        entries = [{"id": int(i), "token": tokenizer.token(int(i)), "p": float(q),
                    "p_sample": float(sample[int(i)])} for q, i in zip(p, index)]
    return probs, sample, entries


def generate_events(entry: ServedModel, emit: Callable[[dict], None], *, prime: str = "",
                    max_tokens: int, top: int = 10, condition: str | None = None,
                    beam: int = 0, stop: tuple[str, ...] = (), sampling: dict | None = None
                    ) -> str:
    """Continue ``prime`` as :func:`rnnkit.tasks.lm.generate` does, handing ``emit`` the
    events of a stream, in order:

    - ``{"event": "token", "index": k, "id", "token", "p", "p_sample", "top": [...]}`` for
      the k-th token (1-based), with the distribution it was drawn from (see
      :func:`distribution`; ``top`` 0: an empty list);
    - ``{"event": "text", "text": piece}`` as text settles (the pieces join to the result).

    ``sampling``: temperature, top_k, top_p, greedy, seed (as given; the library's defaults
    otherwise). ``beam`` > 0 searches instead and hands the text once, without token events.
    A conditioned model needs ``condition``, and stops at the end of the line unless
    ``stop`` says otherwise. Returns the text; ``emit`` may raise
    :class:`GenerationCancelled` to stop.
    """
    from rnnkit.tasks.lm import generate_from

    sampling = dict(sampling or {})
    model = step_model(entry, condition)
    tokenizer = entry.tokenizers["tokenizer"]
    if entry.task == "conditioned_lm" and not stop:
        stop = ("\n",)

    def on_text(piece: str) -> None:
        emit({"event": "text", "text": piece})

    if beam:                   # the prompt checked as sampling checks it; a search runs to
        _Watching(tokenizer, lambda *_: None).encode(prime or "\n")     # its end
        return generate_from(model, tokenizer, prime, max_tokens=max_tokens, stop=stop,
                             beam=beam, on_text=on_text)
    recording = _Recording(model)
    greedy = bool(sampling.get("greedy"))
    options = {k: sampling[k] for k in ("temperature", "top_k", "top_p") if k in sampling}

    def on_token(k: int, token: int) -> None:
        probs, sample, top_entries = distribution(recording.log_probs, top, tokenizer,
                                                  greedy=greedy, sampling=options)
        emit({"event": "token", "index": k, "id": token, "token": tokenizer.token(token),
              "p": float(probs[token]), "p_sample": float(sample[token]), "top": top_entries})

    return generate_from(recording, _Watching(tokenizer, on_token), prime,
                         max_tokens=max_tokens, stop=stop, on_text=on_text, **sampling)


__all__ = ["score_texts", "classify_texts", "tag_sentences", "translate_texts",
           "available_kinds", "activation_view", "generate_events", "distribution",
           "step_model", "GenerationCancelled"]

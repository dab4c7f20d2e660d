"""Text generation from any step-wise language model: sampling, greedy and beam search.

Everything here relies only on this protocol (``V`` vocabulary, ``L`` layers, ``H`` hidden):

- ``model.initial_state(B)`` an opaque state: a tensor or a (nested) tuple of tensors,
  batch on dimension 1, e.g. (L, B, H);
- ``model.prime(tokens, state)`` tokens (T, B) -> ``(log_probs, state)``, log_probs (B, V)
  the natural-log distribution of the token after the last one: a whole prompt in one call;
- ``model.step(tokens, state)`` tokens (B,) -> ``(log_probs, state)``, log_probs (B, V).

Token tensors are ``torch.long`` on the device of the state's first tensor (the CPU if the
state holds none). Model calls run under ``torch.no_grad()``; putting the model in eval
mode (no dropout) is the caller's job.

Sampling draws from the model's distribution after :func:`filter_logits` — temperature,
then top-k, then nucleus (top-p) — with a ``torch.Generator`` so that a seed fixes the
text. Greedy decoding is the argmax of the unfiltered distribution. Beam search scores a
hypothesis y_1..y_n by ``sum_t log p(y_t | ...) / n ** length_penalty`` (the simple form of
the GNMT penalty; 0 gives the raw sum).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from numbers import Integral, Real

import torch
from torch import Tensor

# Probability mass closer than this to top_p counts as reaching it: float rounding must not
# add a token to the nucleus when the more likely ones already hold exactly top_p.
_MASS_TOL = 1e-6


def check_sampling_options(temperature: float = 1.0, top_k: int | None = None,
                           top_p: float | None = None) -> None:
    """Raise ValueError naming the first invalid option of :func:`filter_logits`."""
    if (not isinstance(temperature, Real) or isinstance(temperature, bool)
            or not 0 < temperature < float("inf")):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, Integral) or isinstance(top_k, bool)
                              or top_k < 1):
        raise ValueError(f"top_k: expected an int >= 1 or None, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, Real) or isinstance(top_p, bool)
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p: expected a number in (0, 1] or None, got {top_p!r}")


def filter_logits(log_probs: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """The distribution sampling draws from, as renormalised log-probabilities.

    In order: divide by ``temperature``; keep the ``top_k`` most likely tokens (exactly k,
    ties broken by ``torch.topk``); keep the nucleus, the smallest set of most likely tokens
    whose probability (after the previous steps) is at least ``top_p`` — always the top
    token. Dropped tokens get log-probability ``-inf``.

    Args:
        log_probs: (B, V) log-probabilities (or any logits: the result is normalised).
        temperature: > 0; below 1 sharpens, above 1 flattens.
        top_k: int >= 1 or None (keep all); values above V keep all.
        top_p: in (0, 1] or None (keep all).

    Returns:
        (B, V) log-probabilities, each row's ``exp`` summing to 1.
    """
    check_sampling_options(temperature, top_k, top_p)
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs: expected a 2-D tensor (B, V), got shape "
                         f"{tuple(log_probs.shape)}")
    top = log_probs.max(dim=-1, keepdim=True).values
    temperature = max(temperature, torch.finfo(log_probs.dtype).tiny)   # not 0 in float32
    scores = (log_probs - top) / temperature      # (B, V); the best stays 0 at any temperature
    scores = scores.nan_to_num(nan=-math.inf)     # a row of -inf: -inf - -inf
    if top_k is not None and top_k < scores.shape[1]:
        scores = _keep_top_k(scores, top_k)
    scores = torch.log_softmax(scores, dim=-1)
    if top_p is not None and top_p < 1:
        scores = torch.log_softmax(_keep_top_p(scores, top_p), dim=-1)
    return scores


def _keep_top_k(scores: Tensor, k: int) -> Tensor:
    """(B, V) -> (B, V): the k largest entries of each row, ``-inf`` elsewhere."""
    kept = scores.topk(k, dim=-1).indices                              # (B, k)
    return torch.full_like(scores, float("-inf")).scatter(1, kept, scores.gather(1, kept))


def _keep_top_p(log_probs: Tensor, top_p: float) -> Tensor:
    """(B, V) normalised -> (B, V): each row's nucleus of mass >= top_p, ``-inf`` elsewhere."""
    sorted_lp, order = log_probs.sort(dim=-1, descending=True)         # (B, V)
    probs = sorted_lp.double().exp()
    mass_before = probs.cumsum(-1) - probs                             # of the likelier tokens
    keep = mass_before < top_p - _MASS_TOL                             # more mass still needed
    keep[:, 0] = True
    keep = torch.zeros_like(keep).scatter(1, order, keep)              # back to token order
    return log_probs.masked_fill(~keep, float("-inf"))


def reorder_state(state, index: Tensor):
    """Select batch rows of a state: ``index_select`` on dimension 1 of every tensor.

    Args:
        state: a tensor (L, B, H) or a (nested) tuple or list of such tensors.
        index: (B',) long indices into the B rows; repeats allowed.

    Returns:
        The same structure with every tensor (L, B', H).
    """
    if isinstance(state, Tensor):
        return state.index_select(1, index.to(state.device))
    if isinstance(state, (tuple, list)):
        rows = [reorder_state(s, index) for s in state]
        return type(state)(*rows) if hasattr(state, "_fields") else type(state)(rows)
    raise ValueError(f"state: expected a tensor or a tuple of tensors, got "
                     f"{type(state).__name__}")


def _state_tensors(state) -> Iterator[Tensor]:
    """The tensors of a (nested) state, depth first."""
    if isinstance(state, Tensor):
        yield state
    elif isinstance(state, (tuple, list)):
        for part in state:
            yield from _state_tensors(part)


def _check_count(name: str, value, minimum: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def _check_prime(prime_ids: Iterable[int]) -> list[int]:
    ids = [int(i) for i in prime_ids]
    if not ids:
        raise ValueError("prime: expected at least one token")
    return ids


def _prime(model, prime_ids: list[int]) -> tuple[Tensor, object]:
    """Run the prompt through the model as one sequence: -> (log_probs (1, V), state)."""
    state = model.initial_state(1)
    first = next(_state_tensors(state), None)
    device = first.device if first is not None else torch.device("cpu")
    tokens = torch.tensor(prime_ids, dtype=torch.long, device=device)
    with torch.no_grad():
        return model.prime(tokens[:, None], state)                     # (T, 1)


def sample_tokens(model, prime_ids: Sequence[int], *, max_tokens: int,
                  temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, greedy: bool = False,
                  stop_ids: Iterable[int] = (), seed: int | None = None,
                  generator: torch.Generator | None = None) -> Iterator[int]:
    """Generate token ids one at a time after a prompt, lazily, for streaming.

    The options are checked at once; the model is primed (one ``prime`` call with the
    prompt as (T, 1)) on the first ``next``, then each further token costs one ``step``
    call with (1,) and a (1, V) distribution. Generation stops after ``max_tokens`` ids or
    after yielding an id in ``stop_ids``.

    Args:
        model: a step model (see the module docstring).
        prime_ids: the prompt, at least one token id.
        max_tokens: int >= 0, the most ids to yield.
        temperature, top_k, top_p: as in :func:`filter_logits`.
        greedy: take the argmax of the model's distribution (the first on ties) instead of
            sampling; the sampling options (temperature, top_k, top_p) must then be left at
            their defaults — given with ``greedy`` they are refused, not ignored.
        stop_ids: ids that end generation; the stop id itself is yielded.
        seed: seeds a fresh CPU ``torch.Generator`` (same seed, same tokens).
        generator: a ``torch.Generator`` to draw from instead; neither given: torch's global
            random state.

    Returns:
        An iterator of ints.
    """
    prime_ids = _check_prime(prime_ids)
    _check_count("max_tokens", max_tokens, 0)
    check_sampling_options(temperature, top_k, top_p)
    if greedy:
        given = [f"{name}={value!r}" for name, value, unset in
                 (("temperature", temperature, 1.0), ("top_k", top_k, None),
                  ("top_p", top_p, None)) if value != unset]
        if given:
            raise ValueError(f"greedy: takes the likeliest token; {', '.join(given)} is for "
                             f"sampling only (drop one of them)")
    if seed is not None and generator is not None:
        raise ValueError("seed: give seed or generator, not both")
    if seed is not None:
        _check_count("seed", seed, 0)
        generator = torch.Generator().manual_seed(seed)
    options = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    return _token_stream(model, prime_ids, max_tokens, options, greedy,
                         frozenset(int(i) for i in stop_ids), generator)


def _token_stream(model, prime_ids: list[int], max_tokens: int, options: dict, greedy: bool,
                  stop_ids: frozenset[int], generator: torch.Generator | None
                  ) -> Iterator[int]:
    if max_tokens == 0:
        return
    log_probs, state = _prime(model, prime_ids)                        # (1, V)
    for count in range(1, max_tokens + 1):
        token = _pick_token(log_probs, options, greedy, generator)
        yield token
        if token in stop_ids or count == max_tokens:
            return
        tokens = torch.tensor([token], dtype=torch.long, device=log_probs.device)  # (1,)
        with torch.no_grad():
            log_probs, state = model.step(tokens, state)


def _pick_token(log_probs: Tensor, options: dict, greedy: bool,
                generator: torch.Generator | None) -> int:
    """(1, V) log-probabilities -> the next token id: argmax, or a draw after filtering."""
    if greedy:
        return int(log_probs[0].argmax())
    probs = filter_logits(log_probs, **options).exp()                  # (1, V)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_text(model, tokenizer, prime: str, *, max_tokens: int,
                  stop: str | Iterable[str] = (), on_text: Callable[[str], None] | None = None,
                  **sampling) -> str:
    """Continue ``prime`` with generated text, streaming it piece by piece.

    The prompt is ``tokenizer.encode(prime)``; tokens come from :func:`sample_tokens`
    (``sampling``: temperature, top_k, top_p, greedy, stop_ids, seed, generator).
    Generation ends after ``max_tokens`` tokens, at ``tokenizer.eos_id`` (when not None) or
    an id in ``stop_ids`` — that token is not part of the text — or at the first occurrence
    of a ``stop`` string in the continuation, where the text is cut (the stop string is left
    out).

    The continuation is decoded from all ids so far, in the prompt's context, and
    ``on_text`` receives each newly settled suffix. Text that could still turn into a stop
    string, and trailing U+FFFD (a character whose bytes are not all out yet), wait for the
    next token, so the pieces always join to exactly the returned string.

    Args:
        model: a step model (see the module docstring).
        tokenizer: ``encode(str) -> list[int]``, ``decode(list[int]) -> str`` and
            ``eos_id`` (int or None); ``decode`` of a longer id list is assumed to extend
            the decode of its prefix.
        prime: the prompt, encoding to at least one token.
        max_tokens: int >= 0.
        stop: a string or strings (non-empty) that end the text.
        on_text: called with each new piece of text, never with "".

    Returns:
        The generated continuation, without the prompt.
    """
    stops = _check_stop(stop)
    prime_ids = list(tokenizer.encode(prime))
    stop_ids = {int(i) for i in sampling.pop("stop_ids", ())}
    if getattr(tokenizer, "eos_id", None) is not None:
        stop_ids.add(tokenizer.eos_id)
    tokens = sample_tokens(model, prime_ids, max_tokens=max_tokens, stop_ids=stop_ids,
                           **sampling)
    context = tokenizer.decode(prime_ids)
    ids: list[int] = []
    text = emitted = ""
    for token in tokens:
        if token in stop_ids:
            break
        ids.append(token)
        text = tokenizer.decode(prime_ids + ids)[len(context):]
        cut = _stop_position(text, stops)
        if cut is not None:
            text = text[:cut]
            break
        emitted = _emit(emitted, text[:len(text) - _unsettled_tail(text, stops)], on_text)
    return _emit(emitted, text, on_text)


def _check_stop(stop: str | Iterable[str]) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop: expected non-empty strings, got {s!r}")
    return stops


def _stop_position(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _unsettled_tail(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters may still change: an unfinished stop string or U+FFFD."""
    held = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held


def _emit(emitted: str, settled: str, on_text: Callable[[str], None] | None) -> str:
    """Hand ``on_text`` what ``settled`` adds to ``emitted``; return all text handed out."""
    piece = settled[len(emitted):]
    if piece and on_text is not None:
        on_text(piece)
    return emitted + piece


def beam_search(model, prime_ids: Sequence[int], *, beam_size: int = 5, max_tokens: int,
                eos_id: int | None = None, length_penalty: float = 1.0
                ) -> list[tuple[list[int], float]]:
    """The most likely continuations of a prompt, by beam search.

    At each time step every live hypothesis is extended by every token, and the
    ``beam_size`` extensions with the largest summed log-probability are kept; those ending
    in ``eos_id`` (or reaching ``max_tokens`` tokens) finish, the others stay live. The live
    hypotheses (k <= beam_size) advance together: one ``step`` call with tokens (k,) and the
    state rows picked by :func:`reorder_state`. Search ends at ``max_tokens`` or when no
    hypothesis is live. ``beam_size=1`` is greedy decoding; a beam of V ** max_tokens is
    exhaustive.

    Args:
        model: a step model (see the module docstring).
        prime_ids: the prompt, at least one token id.
        beam_size: int >= 1.
        max_tokens: int >= 1, the longest continuation.
        eos_id: the id that ends a hypothesis (kept as its last token), or None.
        length_penalty: >= 0; a hypothesis of n tokens (eos included) scores
            ``sum log p / n ** length_penalty``.

    Returns:
        At most ``beam_size`` finished hypotheses ``(token ids, score)``, best first.
    """
    prime_ids = _check_prime(prime_ids)
    _check_count("beam_size", beam_size, 1)
    _check_count("max_tokens", max_tokens, 1)
    if (not isinstance(length_penalty, Real) or isinstance(length_penalty, bool)
            or not 0 <= length_penalty < float("inf")):
        raise ValueError(f"length_penalty: expected a finite number >= 0, got {length_penalty!r}")
    log_probs, state = _prime(model, prime_ids)                        # (1, V)
    seqs: list[list[int]] = [[]]
    sums = torch.zeros(1, dtype=torch.float64, device=log_probs.device)   # (k,)
    finished: list[tuple[list[int], float]] = []
    for t in range(max_tokens):
        V = log_probs.shape[1]
        totals = (sums[:, None] + log_probs.double()).flatten()       # (k*V,)
        best, flat = totals.topk(min(beam_size, totals.numel()))
        live = []                                                      # (rank, row, seq)
        for rank, (total, f) in enumerate(zip(best.tolist(), flat.tolist())):
            if total == float("-inf"):                                 # impossible from here
                break
            row, token = divmod(f, V)
            seq = seqs[row] + [token]
            if token == eos_id or t == max_tokens - 1:
                finished.append((seq, total / len(seq) ** length_penalty))
            else:
                live.append((rank, row, seq))
        if not live:
            break
        ranks, rows, seqs = (list(column) for column in zip(*live))
        sums = best[ranks]                                             # (k,)
        tokens = torch.tensor([seq[-1] for seq in seqs], dtype=torch.long,
                              device=log_probs.device)                 # (k,)
        state = reorder_state(state, torch.tensor(rows, device=log_probs.device))
        with torch.no_grad():
            log_probs, state = model.step(tokens, state)
    finished.sort(key=lambda hyp: hyp[1], reverse=True)
    return finished[:beam_size]

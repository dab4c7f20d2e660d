"""N-best rescoring with a trained language model: the API behind ``rnnkit rescore``.

A speech recogniser or translator proposes, per utterance, a list of hypotheses with its
own scores; the language model scores each hypothesis and the combination picks a new best::

    from rnnkit.tasks import rescore
    lists = rescore.read_nbest("nbest.tsv")
    scored = rescore.score_nbest("runs/ptb", lists)
    best = rescore.one_best(scored, lm_weight=0.8, rnn_weight=0.5)

Formats (``read_nbest``; "auto" tells them apart by the first line):

- ``rnnlm`` — the RNNLM toolkit's ``-nbest`` input: ``ID word word …`` per line, the
  hypotheses of one utterance on consecutive lines sharing their ID; no other scores.
- ``tsv`` — ``ID<TAB>score<TAB>lm_score<TAB>hypothesis``: the recogniser's (acoustic or
  translation) score and its language-model score, both log10 probabilities (the RNNLM
  toolkit's and SRILM's unit); ``lm_score`` may be empty.
- ``kaldi`` — Kaldi's n-best text: ``UTTID-N word word …`` (N the rank, counting from 1 in
  each utterance), no scores. A file whose keys all look so but repeat (``sent-1`` on two
  lines) is the RNNLM toolkit's; ``--format`` settles any doubt.

Scores (all log10): rnnkit's ``rnn`` is the hypothesis' log-probability, its closing
``<eos>`` included (unknown words are ``<unk>``, predicted as a token). The language-model
score is ``lm = rnn_weight * rnn + (1 - rnn_weight) * lm_score`` (log-linear interpolation
with the list's own LM score; ``rnn`` alone where a hypothesis has none), and the combined
score ``score + lm_weight * lm``; the best combined score is the new 1-best (ties: the
earlier hypothesis). ``context="reset"`` scores each hypothesis from a fresh state;
``"carry"`` starts every hypothesis of an utterance from the state after the previous
utterance's new 1-best (the RNNLM toolkit carries its first hypothesis).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rnnkit.data.text import iter_lines

FORMATS = ("auto", "rnnlm", "tsv", "kaldi")
CONTEXTS = ("reset", "carry")


@dataclass
class Hypothesis:
    """One hypothesis: its text, the list's scores (log10; None when absent), rnnkit's."""

    text: str
    line: int
    score: float = 0.0
    lm_score: float | None = None
    rnn: float | None = None


@dataclass
class NBest:
    """The hypotheses of one utterance, in the list's order."""

    id: str
    hypotheses: list[Hypothesis] = field(default_factory=list)


def _number(text: str, path, n: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}, line {n}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}, line {n}: {what} {text!r} is not finite")
    return value


def _kaldi_key(key: str) -> tuple[str, int] | None:
    """("utt", 3) for Kaldi's "utt-3"; None for a key of another form."""
    stem, _, rank = key.rpartition("-")
    return (stem, int(rank)) if stem and rank.isdigit() else None


def _format_of(rows: list[str]) -> str:
    """The format of a file's non-empty lines: "tsv" if the first has a tab; "kaldi" if
    every key is ``UTTID-N`` with each utterance's ranks counting 1, 2, …; else "rnnlm"
    (whose hypotheses of one utterance share one key — ``sent-1`` twice is RNNLM's)."""
    if "\t" in rows[0]:
        return "tsv"
    keys = [_kaldi_key(raw.split(maxsplit=1)[0]) for raw in rows]
    if any(k is None for k in keys):
        return "rnnlm"
    expected: dict[str, int] = {}
    for stem, rank in keys:
        if rank != expected.get(stem, 1):
            return "rnnlm"
        expected[stem] = rank + 1
    return "kaldi"


def read_nbest(path: str | os.PathLike, fmt: str = "auto") -> list[NBest]:
    """The n-best lists of a file, in file order (see the module docstring for formats).

    Raises ValueError naming the file and line: a line without an ID or without a
    hypothesis, a TSV line without 4 columns or with a score that is not a finite number, an
    utterance ID that appears again after other IDs, an empty file.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {list(FORMATS)}, got {fmt!r}")
    rows = [(n, raw) for n, raw in enumerate(iter_lines(path), start=1) if raw.strip()]
    if not rows:
        raise ValueError(f"{path}: no hypotheses")
    if fmt == "auto":
        fmt = _format_of([raw for _, raw in rows])
    lists: list[NBest] = []
    seen: dict[str, int] = {}
    for n, raw in rows:
        if fmt == "tsv":
            cols = raw.split("\t")
            if len(cols) != 4:
                raise ValueError(f"{path}, line {n}: {len(cols)} tab-separated columns; "
                                 f"expected ID<TAB>score<TAB>lm_score<TAB>hypothesis")
            key, text = cols[0].strip(), cols[3].strip()
            score = _number(cols[1], path, n, "score")
            lm_score = _number(cols[2], path, n, "lm_score") if cols[2].strip() else None
        else:
            parts = raw.split(maxsplit=1)
            key, text = parts[0], parts[1].strip() if len(parts) == 2 else ""
            if fmt == "kaldi":
                if _kaldi_key(key) is None:
                    raise ValueError(f"{path}, line {n}: key {key!r} is not Kaldi's UTTID-N")
                key = _kaldi_key(key)[0]
            score, lm_score = 0.0, None
        if not key:
            raise ValueError(f"{path}, line {n}: no utterance ID")
        if not text:
            raise ValueError(f"{path}, line {n}: utterance {key!r} has an empty hypothesis")
        if not lists or lists[-1].id != key:
            if key in seen:
                raise ValueError(f"{path}, line {n}: utterance {key!r} again (its list began "
                                 f"on line {seen[key]}); keep each list on consecutive lines")
            seen[key] = n
            lists.append(NBest(key))
        lists[-1].hypotheses.append(Hypothesis(text, n, score, lm_score))
    return lists


def score_nbest(directory: str | Path, lists: list[NBest], *, context: str = "reset",
                lm_weight: float = 1.0, rnn_weight: float = 1.0,
                device: str | None = "cpu") -> list[NBest]:
    """``lists`` with each hypothesis' ``rnn`` (log10 probability under the model in
    ``directory``), scored as ``rnnkit score`` scores lines (:func:`rnnkit.tasks.lm.
    score_texts`: batches bounded in tokens and output scores, long hypotheses in windows).
    With ``context="carry"`` the state after each utterance's new 1-best (by ``lm_weight``
    and ``rnn_weight``) starts the next utterance's hypotheses."""
    from rnnkit.tasks.common import logits_tokens
    from rnnkit.tasks.lm import line_nll, load_lm, score_texts

    if context not in CONTEXTS:
        raise ValueError(f"--context: expected one of {list(CONTEXTS)}, got {context!r}")
    model, tokenizer, _ = load_lm(directory, device)
    window = logits_tokens(model.config.vocab_size)
    out, state = [], None
    for nbest in lists:
        rows = score_texts(model, tokenizer, [h.text for h in nbest.hypotheses], state=state)
        scored = NBest(nbest.id, [replace(h, rnn=r["log10prob"])
                                  for h, r in zip(nbest.hypotheses, rows)])
        out.append(scored)
        if context == "carry":                   # the state after the new 1-best, in windows
            best = scored.hypotheses[best_index(scored, lm_weight, rnn_weight)].text
            line = torch.tensor(tokenizer.encode_line(best), dtype=torch.long)
            with torch.no_grad():
                _, state = line_nll(model, line, tokenizer.line_end_id, window, state)
    return out


def check_weights(lm_weight: float, rnn_weight: float) -> None:
    """``lm_weight`` a finite number >= 0, ``rnn_weight`` in [0, 1] (errors name the flags)."""
    if not (math.isfinite(lm_weight) and lm_weight >= 0):
        raise ValueError(f"--lm-weight: expected a number >= 0, got {lm_weight}")
    if not 0 <= rnn_weight <= 1:
        raise ValueError(f"--rnn-weight: expected a number in [0, 1], got {rnn_weight}")


def combined(h: Hypothesis, lm_weight: float, rnn_weight: float) -> float:
    """``score + lm_weight * lm`` of a scored hypothesis (see the module docstring)."""
    lm = h.rnn if h.lm_score is None else rnn_weight * h.rnn + (1 - rnn_weight) * h.lm_score
    return h.score + lm_weight * lm


def best_index(nbest: NBest, lm_weight: float, rnn_weight: float) -> int:
    """Index of the hypothesis with the best combined score (the first of equals)."""
    values = [combined(h, lm_weight, rnn_weight) for h in nbest.hypotheses]
    return values.index(max(values))


def one_best(lists: list[NBest], lm_weight: float = 1.0, rnn_weight: float = 1.0
             ) -> list[tuple[str, str]]:
    """(utterance ID, its new 1-best text) of each scored list."""
    check_weights(lm_weight, rnn_weight)
    return [(n.id, n.hypotheses[best_index(n, lm_weight, rnn_weight)].text) for n in lists]


def rescored_lines(lists: list[NBest], lm_weight: float, rnn_weight: float) -> list[str]:
    """The rescored lists as TSV lines ``ID<TAB>rank<TAB>combined<TAB>rnn<TAB>score<TAB>
    lm_score<TAB>hypothesis``, each list best first (rank 1), scores to 4 decimals."""
    check_weights(lm_weight, rnn_weight)
    rows = []
    for n in lists:
        order = sorted(range(len(n.hypotheses)),
                       key=lambda k: (-combined(n.hypotheses[k], lm_weight, rnn_weight), k))
        for rank, k in enumerate(order, start=1):
            h = n.hypotheses[k]
            lm = "" if h.lm_score is None else f"{h.lm_score:.4f}"
            rows.append(f"{n.id}\t{rank}\t{combined(h, lm_weight, rnn_weight):.4f}\t"
                        f"{h.rnn:.4f}\t{h.score:.4f}\t{lm}\t{h.text}")
    return rows


def read_references(path: str | os.PathLike) -> dict[str, str]:
    """``ID text`` lines (Kaldi's ``text`` file) -> {ID: text}; an ID twice is an error."""
    refs: dict[str, str] = {}
    for n, raw in enumerate(iter_lines(path), start=1):
        if not raw.strip():
            continue
        parts = raw.split(maxsplit=1)
        if parts[0] in refs:
            raise ValueError(f"{path}, line {n}: utterance {parts[0]!r} again")
        refs[parts[0]] = parts[1].strip() if len(parts) == 2 else ""
    if not refs:
        raise ValueError(f"{path}: no references")
    return refs


def word_error_rate(best: list[tuple[str, str]], references: dict[str, str], path) -> float:
    """Corpus WER (jiwer) of 1-best texts against references; a missing reference is an
    error naming ``path``."""
    import jiwer

    missing = [key for key, _ in best if key not in references]
    if missing:
        raise ValueError(f"{path}: no reference for {len(missing)} utterance(s), e.g. "
                         f"{missing[0]!r}")
    return jiwer.wer([references[key] for key, _ in best], [text for _, text in best])


LM_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
RNN_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def tune(lists: list[NBest], references: dict[str, str], path,
         rnn_weights: tuple[float, ...] = RNN_WEIGHTS) -> dict:
    """The weights of least WER on a scored development set, searched over the grid
    LM_WEIGHTS x ``rnn_weights`` (ties: the first found); {lm_weight, rnn_weight, wer}."""
    best = None
    for lm_weight in LM_WEIGHTS:
        for rnn_weight in rnn_weights:
            wer = word_error_rate(one_best(lists, lm_weight, rnn_weight), references, path)
            if best is None or wer < best["wer"]:
                best = {"lm_weight": lm_weight, "rnn_weight": rnn_weight, "wer": wer}
    return best

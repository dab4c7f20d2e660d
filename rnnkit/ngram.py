"""Interpolation of a language model with an n-gram model (ARPA or KenLM binary, read by the
``kenlm`` module): ``rnnkit eval|score DIR --ngram FILE --ngram-weight λ``.

Per token, ``p = λ p_ngram + (1 - λ) p_rnnkit`` (linear interpolation). Both models predict
the same events: a word outside rnnkit's vocabulary is ``<unk>`` for both (the n-gram is
given the string ``<unk>``, so it uses its own ``<unk>`` probability), and rnnkit's line end
``<eos>`` is the n-gram's ``</s>``; each line starts from ``<s>`` in the n-gram. Word-level
models only (an n-gram model's tokens are words).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch
from torch import Tensor

_LN10 = math.log(10)

#: The n-gram's share of each token's probability when ``--ngram-weight`` is not given.
DEFAULT_WEIGHT = 0.5


@contextlib.contextmanager
def _quiet_stderr():
    """KenLM's C++ code prints its loading progress on file descriptor 2: hush it."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


class NGram:
    """A KenLM model and the rnnkit tokenizer whose tokens it scores.

    Args:
        path: an ARPA file or a KenLM binary (order 2 or more).
        tokenizer: the word-level tokenizer of the rnnkit model it is interpolated with.
    """

    def __init__(self, path: str | os.PathLike, tokenizer):
        try:
            import kenlm
        except ImportError:
            raise ValueError("--ngram: needs the kenlm module (pip install kenlm; it builds "
                             "from source in about two minutes)") from None
        if tokenizer.level != "word":
            raise ValueError(f"--ngram: an n-gram model scores words; this model's tokens "
                             f"are {tokenizer.level}-level")
        self.path = str(path)
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such n-gram model file")
        config = kenlm.Config()
        config.show_progress = False
        try:
            with _quiet_stderr():
                self.model = kenlm.Model(self.path, config)
        except (OSError, RuntimeError) as error:
            reason = str(error).split(" threw ")[-1].strip(" )")
            raise ValueError(f"{path}: not an ARPA or KenLM binary n-gram model "
                             f"({reason})") from None
        self.tokenizer = tokenizer
        words = [tokenizer.token(i) for i in range(tokenizer.vocab_size)]
        words = [w for w in words if not (w.startswith("<") and w.endswith(">"))]
        self.unknown = sum(1 for w in words if w not in self.model)
        self.vocabulary = len(words)

    def policy(self) -> str:
        """One line: how the two vocabularies were made to agree."""
        return (f"n-gram {Path(self.path).name} (order {self.model.order}): words outside "
                f"rnnkit's vocabulary are <unk> for both models, <eos> is </s>; "
                f"{self.unknown:,} of rnnkit's {self.vocabulary:,} words are unknown to the "
                f"n-gram and get its <unk> probability")

    def line_log10(self, line: str) -> list[float]:
        """log10 probabilities of a line's words and its end (``</s>``): as many as
        ``tokenizer.encode_line(line)`` has tokens."""
        tok = self.tokenizer
        words = ["<unk>" if i == tok.unk_id else w
                 for w, i in zip(line.split(), tok.encode_words(line.split()))]
        return [score for score, _, _ in self.model.full_scores(" ".join(words), bos=True,
                                                                 eos=True)]


def check_weight(weight: float) -> None:
    """λ, the n-gram's share, in [0, 1]."""
    if not 0 <= weight <= 1:
        raise ValueError(f"--ngram-weight: expected a number in [0, 1], got {weight}")


def interpolate(rnn_log: Tensor, ngram_log10: Tensor, weight: float) -> Tensor:
    """Natural-log probabilities ``log(λ 10^ngram + (1 - λ) e^rnn)`` per token (N,) from
    rnnkit's natural-log (N,) and the n-gram's log10 (N,) probabilities, stably."""
    check_weight(weight)
    rnn_log = rnn_log.double()
    ngram = ngram_log10.double() * _LN10
    if weight == 0:
        return rnn_log
    if weight == 1:
        return ngram
    return torch.logaddexp(ngram + math.log(weight), rnn_log + math.log1p(-weight))

"""Output layers of a language model: ``y_t = softmax(V h_t)`` and its fast factorisations.

Every head maps hidden states (N, H) to

- ``nll(hidden, targets)``: (N,) negative log-likelihood of each target, natural log;
- ``log_probs(hidden)``: (N, V) the full next-token log-distribution (for scoring any token,
  sampling and beam search).

``FullSoftmax`` is the textbook output layer (weights optionally tied to the input
embedding, Press & Wolf 2017). ``ClassSoftmax`` is Mikolov's class-factorised softmax
(Mikolov et al. 2011): words are binned into classes by frequency and
``P(w | h) = P(class(w) | h) · P(w | class(w), h)``, so training touches C + |class| output
rows per token instead of V. ``AdaptiveSoftmax`` is PyTorch's
``AdaptiveLogSoftmaxWithLoss`` (Grave et al. 2017).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEADS = ("full", "class", "adaptive")


class FullSoftmax(nn.Module):
    """``log softmax(h @ weight.T + bias)`` over the whole vocabulary; weight (V, H)."""

    def __init__(self, hidden_size: int, vocab_size: int, tied_weight: nn.Parameter | None = None):
        super().__init__()
        self.tied = tied_weight is not None
        self.weight = tied_weight if self.tied else nn.Parameter(torch.empty(vocab_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        if not self.tied:
            nn.init.uniform_(self.weight, -0.1, 0.1)

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.weight, self.bias)                 # (N, V)

    def nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(hidden), targets, reduction="none")

    def log_probs(self, hidden: Tensor) -> Tensor:
        return F.log_softmax(self.logits(hidden), dim=-1)


def frequency_classes(counts: list[int], num_classes: int) -> Tensor:
    """Mikolov's frequency binning: class of each word id (V,), classes ordered by frequency.

    Words sorted by count are cut where the cumulative share of the unigram mass crosses
    k / num_classes, so each class carries about the same probability: frequent words get
    small classes, rare words share large ones. Empty bins are dropped.
    """
    counts_t = torch.tensor(counts, dtype=torch.float64).clamp_min(1.0)  # unseen ids still count
    order = torch.argsort(counts_t, descending=True, stable=True)
    share = torch.cumsum(counts_t[order], 0) / counts_t.sum()
    bins = torch.clamp((share * num_classes).ceil().long() - 1, 0, num_classes - 1)
    bins = torch.unique_consecutive(bins, return_inverse=True)[1]         # drop empty bins
    class_of = torch.empty(len(counts), dtype=torch.long)
    class_of[order] = bins
    return class_of


class ClassSoftmax(nn.Module):
    """Class-factorised softmax; ``class_of`` (V,) assigns each word a class in [0, C).

    Word-layer parameters ``weight`` (V, H) (optionally tied) and ``bias`` (V,); class layer
    ``class_weight`` (C, H), ``class_bias`` (C,).
    """

    def __init__(self, hidden_size: int, class_of: Tensor, tied_weight: nn.Parameter | None = None):
        super().__init__()
        V, C = len(class_of), int(class_of.max()) + 1
        self.num_classes = C
        self.tied = tied_weight is not None
        self.weight = tied_weight if self.tied else nn.Parameter(torch.empty(V, hidden_size))
        self.bias = nn.Parameter(torch.zeros(V))
        self.class_weight = nn.Parameter(torch.empty(C, hidden_size))
        self.class_bias = nn.Parameter(torch.zeros(C))
        nn.init.uniform_(self.class_weight, -0.1, 0.1)
        if not self.tied:
            nn.init.uniform_(self.weight, -0.1, 0.1)
        order = torch.argsort(class_of, stable=True)                    # word ids, class by class
        sizes = torch.bincount(class_of, minlength=C)
        start = torch.zeros(C + 1, dtype=torch.long)
        start[1:] = torch.cumsum(sizes, 0)
        position = torch.empty(V, dtype=torch.long)
        position[order] = torch.arange(V) - start[class_of[order]]      # index within class
        # all derived from the training counts at construction, so not saved
        self.register_buffer("class_of", class_of.clone(), persistent=False)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("start", start, persistent=False)
        self.register_buffer("position", position, persistent=False)

    def nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """(N, H), (N,) -> (N,): −log P(class) − log P(word | class), one product per class.

        The word layer is gathered once into class order and split into per-class views,
        and the tokens are sorted by class and split the same way, so the loop over the
        classes present does three small operations each, and the backward pass writes
        each gradient once (not one full-size gradient per class).
        """
        classes = self.class_of[targets]                                # (N,)
        class_lp = F.log_softmax(F.linear(hidden, self.class_weight, self.class_bias), -1)
        nll = -class_lp.gather(1, classes[:, None]).squeeze(1)
        sizes = (self.start[1:] - self.start[:-1]).tolist()
        weights = self.weight.index_select(0, self.order).split(sizes)   # class c: (|c|, H)
        biases = self.bias.index_select(0, self.order).split(sizes)
        by_class = torch.argsort(classes, stable=True)
        present, counts = torch.unique_consecutive(classes[by_class], return_counts=True)
        counts = counts.tolist()
        rows = hidden.index_select(0, by_class).split(counts)          # tokens of class c
        positions = self.position[targets[by_class]][:, None].split(counts)
        word_nll = [-F.log_softmax(F.linear(h, weights[c], biases[c]), -1).gather(1, pos)
                    for c, h, pos in zip(present.tolist(), rows, positions)]
        within = torch.zeros_like(nll).scatter(0, by_class, torch.cat(word_nll).squeeze(1))
        return nll + within

    def log_probs(self, hidden: Tensor) -> Tensor:
        """(N, H) -> (N, V): every word's log-probability, all classes at once."""
        class_lp = F.log_softmax(F.linear(hidden, self.class_weight, self.class_bias), -1)
        logits = F.linear(hidden, self.weight, self.bias)               # (N, V)
        N, C = logits.shape[0], self.num_classes
        index = self.class_of.expand(N, -1)
        peak = logits.new_full((N, C), -math.inf).scatter_reduce(1, index, logits, "amax")
        shifted = (logits - peak.gather(1, index)).exp()
        lse = peak + torch.zeros_like(peak).scatter_add(1, index, shifted).log()  # (N, C)
        return logits - lse.gather(1, index) + class_lp.gather(1, index)


class AdaptiveSoftmax(nn.Module):
    """PyTorch's adaptive softmax; ids must be sorted by frequency (rnnkit's vocabularies are)."""

    def __init__(self, hidden_size: int, vocab_size: int, cutoffs: list[int] | None = None):
        super().__init__()
        if not cutoffs:
            cutoffs = default_cutoffs(vocab_size)
        self.inner = nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, list(cutoffs),
                                                   div_value=4.0)

    def nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        return -self.inner(hidden, targets).output

    def log_probs(self, hidden: Tensor) -> Tensor:
        return self.inner.log_prob(hidden)


def default_cutoffs(vocab_size: int) -> list[int]:
    """Head of the ``min(2000, V // 4)`` most frequent words, a second cutoff at
    ``max(V // 5, 10000)``; cutoffs outside (0, V) are dropped."""
    cutoffs = [c for c in (min(2000, vocab_size // 4), max(vocab_size // 5, 10000))
               if 0 < c < vocab_size]
    if len(cutoffs) == 0:
        raise ValueError(f"adaptive softmax: vocabulary of {vocab_size} is too small to split")
    return sorted(set(cutoffs))

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

Every head also takes ``direct``: the maximum-entropy direct connections of the rows
(:class:`rnnkit.models.direct.DirectFeatures`, or None), whose scores are added to each
softmax group's logits before it is normalised — the words, and the classes (class
softmax) or clusters (adaptive softmax).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.models.direct import CLASSES, WORDS, DirectFeatures

HEADS = ("full", "class", "adaptive")


def _ids(n: int, like: Tensor, start: int = 0) -> Tensor:
    return torch.arange(start, start + n, device=like.device)


def plus_direct(logits: Tensor, direct: DirectFeatures | None, group: int,
                 units: Tensor) -> Tensor:
    """(N, U) logits of the units ``units`` (U,) of a softmax group, plus their direct
    connections' scores (if any)."""
    return logits if direct is None else logits + direct.scores(group, units)


class LogitsHead(nn.Module):
    """A head whose ``logits(hidden, direct)`` (N, V) are normalised over the whole
    vocabulary at once."""

    def nll(self, hidden: Tensor, targets: Tensor, direct: DirectFeatures | None = None) -> Tensor:
        return F.cross_entropy(self.logits(hidden, direct), targets, reduction="none")

    def log_probs(self, hidden: Tensor, direct: DirectFeatures | None = None) -> Tensor:
        return F.log_softmax(self.logits(hidden, direct), dim=-1)


class FullSoftmax(LogitsHead):
    """``log softmax(h @ weight.T + bias)`` over the whole vocabulary; weight (V, H)."""

    def __init__(self, hidden_size: int, vocab_size: int, tied_weight: nn.Parameter | None = None):
        super().__init__()
        self.tied = tied_weight is not None
        self.weight = tied_weight if self.tied else nn.Parameter(torch.empty(vocab_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        if not self.tied:
            nn.init.uniform_(self.weight, -0.1, 0.1)

    def logits(self, hidden: Tensor, direct: DirectFeatures | None = None) -> Tensor:
        logits = F.linear(hidden, self.weight, self.bias)               # (N, V)
        return plus_direct(logits, direct, WORDS, _ids(logits.shape[1], logits))


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

    def nll(self, hidden: Tensor, targets: Tensor, direct: DirectFeatures | None = None) -> Tensor:
        """(N, H), (N,) -> (N,): −log P(class) − log P(word | class), one product per class.

        The word layer is gathered once into class order and split into per-class views,
        and the tokens are sorted by class and split the same way, so the loop over the
        classes present does three small operations each, and the backward pass writes
        each gradient once (not one full-size gradient per class).
        """
        classes = self.class_of[targets]                                # (N,)
        sizes = (self.start[1:] - self.start[:-1]).tolist()
        weights = self.weight.index_select(0, self.order).split(sizes)   # class c: (|c|, H)
        biases = self.bias.index_select(0, self.order).split(sizes)
        words = self.order.split(sizes)                                 # class c: its ids
        by_class = torch.argsort(classes, stable=True)
        present, counts = torch.unique_consecutive(classes[by_class], return_counts=True)
        present, counts = present.tolist(), counts.tolist()
        rows = hidden.index_select(0, by_class).split(counts)          # tokens of class c
        row_ids = by_class.split(counts)
        positions = self.position[targets[by_class]][:, None].split(counts)
        class_logits = F.linear(hidden, self.class_weight, self.class_bias)   # (N, C)
        word_logits = [F.linear(h, weights[c], biases[c]) for c, h in zip(present, rows)]
        if direct is not None:                   # the classes', then each class's words
            scores = direct.scores_blocks(
                [(None, CLASSES, _ids(self.num_classes, hidden))]
                + [(r, WORDS, words[c]) for c, r in zip(present, row_ids)])
            class_logits = class_logits + scores[0]
            word_logits = [w + d for w, d in zip(word_logits, scores[1:])]
        class_lp = F.log_softmax(class_logits, -1)
        nll = -class_lp.gather(1, classes[:, None]).squeeze(1)
        word_nll = [-F.log_softmax(w, -1).gather(1, pos) for w, pos in zip(word_logits, positions)]
        within = torch.zeros_like(nll).scatter(0, by_class, torch.cat(word_nll).squeeze(1))
        return nll + within

    def log_probs(self, hidden: Tensor, direct: DirectFeatures | None = None) -> Tensor:
        """(N, H) -> (N, V): every word's log-probability, all classes at once."""
        class_logits = F.linear(hidden, self.class_weight, self.class_bias)
        logits = F.linear(hidden, self.weight, self.bias)               # (N, V)
        N, C = logits.shape[0], self.num_classes
        if direct is not None:
            word_scores, class_scores = direct.scores_blocks(
                [(None, WORDS, _ids(logits.shape[1], logits)), (None, CLASSES, _ids(C, logits))])
            logits, class_logits = logits + word_scores, class_logits + class_scores
        class_lp = F.log_softmax(class_logits, -1)
        index = self.class_of.expand(N, -1)
        peak = logits.new_full((N, C), -math.inf).scatter_reduce(1, index, logits, "amax")
        shifted = (logits - peak.gather(1, index)).exp()
        lse = peak + torch.zeros_like(peak).scatter_add(1, index, shifted).log()  # (N, C)
        return logits - lse.gather(1, index) + class_lp.gather(1, index)


class AdaptiveSoftmax(nn.Module):
    """PyTorch's adaptive softmax; ids must be sorted by frequency (rnnkit's vocabularies are).

    A batch with no target in a tail cluster leaves that cluster's parameters unused (no
    gradient): a distributed run must let DDP look for them (see
    :func:`rnnkit.train.distributed.leaves_parameters_unused`)."""

    leaves_parameters_unused = True

    def __init__(self, hidden_size: int, vocab_size: int, cutoffs: list[int] | None = None):
        super().__init__()
        if not cutoffs:
            cutoffs = default_cutoffs(vocab_size)
        self.inner = nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, list(cutoffs),
                                                   div_value=4.0)

    def nll(self, hidden: Tensor, targets: Tensor, direct: DirectFeatures | None = None) -> Tensor:
        if direct is None:
            return -self.inner(hidden, targets).output
        S, V = self.inner.shortlist_size, self.inner.n_classes
        if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < V:
            raise IndexError(f"targets: expected ids in [0, {V}), got "
                             f"[{int(targets.min())}, {int(targets.max())}]")
        clusters = [(i, lo, hi, ((targets >= lo) & (targets < hi)).nonzero().squeeze(1))
                    for i, (lo, hi) in enumerate(self._clusters())]
        clusters = [c for c in clusters if c[3].numel()]
        head_lp, tails_lp = self._log_probs(hidden, direct, clusters)
        short = (targets < S).nonzero().squeeze(1)
        rows = [short, *(r for *_, r in clusters)]
        values = [head_lp[short].gather(1, targets[short, None]).squeeze(1)]
        values += [tail_lp.gather(1, targets[r, None] - lo).squeeze(1) + head_lp[r, S + i]
                   for (i, lo, _, r), tail_lp in zip(clusters, tails_lp)]
        return -torch.zeros_like(targets, dtype=head_lp.dtype).index_put(
            (torch.cat(rows),), torch.cat(values))

    def log_probs(self, hidden: Tensor, direct: DirectFeatures | None = None) -> Tensor:
        if direct is None:
            return self.inner.log_prob(hidden)
        S = self.inner.shortlist_size
        clusters = [(i, lo, hi, None) for i, (lo, hi) in enumerate(self._clusters())]
        head_lp, tails_lp = self._log_probs(hidden, direct, clusters)
        return torch.cat([head_lp[:, :S], *(tail_lp + head_lp[:, S + i, None]
                                            for (i, *_), tail_lp in zip(clusters, tails_lp))],
                         dim=1)

    # PyTorch's head and tail modules, with the direct connections added to their logits
    # (the computation of AdaptiveLogSoftmaxWithLoss, which the tests compare with).

    def _clusters(self) -> list[tuple[int, int]]:
        cutoffs = self.inner.cutoffs
        return list(zip(cutoffs[:-1], cutoffs[1:]))

    def _log_probs(self, hidden: Tensor, direct: DirectFeatures, clusters: list[tuple]
                   ) -> tuple[Tensor, list[Tensor]]:
        """The head's log-probabilities (N, shortlist + clusters: the shortlist's words, then
        the clusters) and, for each ``(i, lo, hi, rows)`` of ``clusters``, the rows' (None:
        all) log P(word | cluster i) (n, hi - lo) of the words lo..hi-1."""
        inner, S = self.inner, self.inner.shortlist_size
        head = inner.head(hidden)
        scores = direct.scores_blocks(
            [(None, WORDS, _ids(S, head)), (None, CLASSES, _ids(inner.n_clusters, head))]
            + [(rows, WORDS, _ids(hi - lo, head, lo)) for _, lo, hi, rows in clusters])
        head_lp = F.log_softmax(head + torch.cat(scores[:2], dim=1), dim=1)
        tails = [inner.tail[i](hidden if rows is None else hidden[rows]) + d
                 for (i, _, _, rows), d in zip(clusters, scores[2:])]
        return head_lp, [F.log_softmax(t, dim=1) for t in tails]


def default_cutoffs(vocab_size: int) -> list[int]:
    """Head of the ``min(2000, V // 4)`` most frequent words, a second cutoff at
    ``max(V // 5, 10000)``; cutoffs outside (0, V) are dropped."""
    cutoffs = [c for c in (min(2000, vocab_size // 4), max(vocab_size // 5, 10000))
               if 0 < c < vocab_size]
    if len(cutoffs) == 0:
        raise ValueError(f"adaptive softmax: vocabulary of {vocab_size} is too small to split")
    return sorted(set(cutoffs))

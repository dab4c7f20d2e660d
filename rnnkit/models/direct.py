"""Maximum-entropy direct connections: hashed n-gram features of the history connected
straight to the output layer (RNNME; Mikolov et al. 2011, "Strategies for training large
scale neural network language models").

A language model with direct connections adds to the score of every output unit ``u`` of a
softmax group ``g`` (the words; the classes of a class softmax; the clusters of an adaptive
one), when the inputs so far are ``… w_{t-1} w_t``::

    score(u | history) += Σ_{k=0}^{K-1}  d[(base(k, g, w_t … w_{t-k+1}) + u) mod M]

``d`` is one table of ``M`` weights (``direct_size``), shared by all features, and ``K`` is
``direct_order``: order 0 is a history-free bias, order 1 a bigram feature of ``w_t``, order
2 a trigram feature of ``w_{t-1} w_t``, and so on. It is a maximum-entropy n-gram model
trained jointly with the network, at the cost of one table look-up per (order, unit);
distinct features that hash to the same entry share it.

The hash (:func:`history_hashes`, then :func:`group_base`) is a polynomial over the words
modulo the prime ``2^31 - 1``; every product stays below ``2^62``, so int64 arithmetic is
exact and every platform gives the same indices. A history word before the start of a
stream is ``-1`` ("none"), which hashes apart from every word.

The history of the next window of a stream (its last ``K - 1`` inputs, (K-1, B)) is carried
in the language model's state, so a stream read in windows gets the features it would get
read whole.

Shapes: T time, B batch, K orders, N rows (positions), U units of a group, M table size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MODULUS = 2 ** 31 - 1                   # a prime: the hash space
# Multipliers below 2^31 (so that hash × multiplier < 2^62): one per history position, and
# one that mixes a group into a history's hash.
POSITION_MULTIPLIERS = (1_000_003, 998_244_353, 1_234_567_891, 1_610_612_741,
                        805_306_457, 402_653_189, 201_326_611, 100_663_319)
GROUP_MULTIPLIER = 1_500_450_271
MAX_ORDER = len(POSITION_MULTIPLIERS) + 1
# The softmax groups whose units get features.
WORDS, CLASSES = 0, 1


def history_hashes(inputs: Tensor, history: Tensor, order: int,
                   lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The hash of each position's history at each order, and the history to carry.

    Args:
        inputs: (T, B) token ids; history: (order - 1, B) the inputs before them, oldest
            first (-1: none); lengths: (B,) of a padded batch (None: all T).

    Returns:
        hashes (T, B, order) int64 in [0, MODULUS): order k hashes ``k`` and the last k
        inputs up to and including each position; the new history (order - 1, B), the
        last ``order - 1`` inputs of each example (of its own length).
    """
    T = inputs.shape[0]
    words = torch.cat([history, inputs]).long() + 2          # (order - 1 + T, B), ≥ 1
    last = order - 1                                         # index of w_t at t = 0
    hashes = []
    for k in range(order):
        h = torch.full_like(inputs, k + 1, dtype=torch.long)
        for j in range(k):                                   # w_{t-j}
            h = (h * POSITION_MULTIPLIERS[j] + words[last - j:last - j + T]) % MODULUS
        hashes.append(h)
    if lengths is None:
        new_history = words[T:]                                # the last order - 1
    else:                                                    # example b's end at lengths[b]
        rows = lengths.to(words.device)[None] + torch.arange(order - 1, device=words.device)[:, None]
        new_history = words.gather(0, rows)
    return torch.stack(hashes, dim=-1), new_history - 2


def group_base(hashes: Tensor, group: int, size: int) -> Tensor:
    """(..., K) history hashes -> (..., K) start index in the table of a group's features."""
    return (hashes * GROUP_MULTIPLIER + group + 1) % MODULUS % size


class DirectConnections(nn.Module):
    """The table ``weight`` (M,) of hashed direct connections, initialised to zero (the
    model starts as the network alone).

    Args:
        size: M, the number of weights; order: K, the number of history orders (≥ 2).
    """

    def __init__(self, size: int, order: int):
        super().__init__()
        if not 2 <= order <= MAX_ORDER:
            raise ValueError(f"direct_order: expected an int in [2, {MAX_ORDER}], got {order}")
        self.size, self.order = size, order
        self.weight = nn.Parameter(torch.zeros(size))

    def initial_history(self, batch_size: int, device=None) -> Tensor:
        """(K-1, B) "no word yet" for ``batch_size`` streams."""
        return torch.full((self.order - 1, batch_size), -1, dtype=torch.long, device=device)

    def hashes(self, inputs: Tensor, history: Tensor,
               lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """See :func:`history_hashes`."""
        return history_hashes(inputs, history, self.order, lengths)

    def features(self, hashes: Tensor) -> "DirectFeatures":
        """The features of rows with history hashes (N, K)."""
        return DirectFeatures(self, hashes)

    def extra_repr(self) -> str:
        return f"size={self.size}, order={self.order}"


class DirectFeatures:
    """Direct-connection scores for N rows (positions) of known history hashes (N, K).

    The scores a head needs are asked for in one call (:meth:`scores_blocks`): the table's
    gradient is then one dense (M,) tensor per call, not one per softmax group.
    """

    def __init__(self, table: DirectConnections, hashes: Tensor):
        self.table, self.hashes = table, hashes

    def scores(self, group: int, units: Tensor) -> Tensor:
        """(N, U): Σ_k weight[(base_k + u) mod M] for every row and every unit id of
        ``units`` (U,) in softmax group ``group``."""
        return self.scores_blocks([(None, group, units)])[0]

    def scores_blocks(self, blocks: list[tuple[Tensor | None, int, Tensor]]) -> list[Tensor]:
        """The scores of several blocks in one look-up: each ``(rows, group, units)`` —
        rows (n,) of this batch (None: all N), a softmax group and its unit ids (U,) —
        gives (n, U)."""
        M, K = self.table.size, self.hashes.shape[1]
        index, shapes = [], []
        for rows, group, units in blocks:
            hashes = self.hashes if rows is None else self.hashes.index_select(0, rows)
            base = group_base(hashes, group, M)                             # (n, K)
            block = torch.empty(base.shape[0], K, len(units), dtype=torch.int32,
                                device=base.device)
            for k in range(K):
                block[:, k] = (base[:, k, None] + units) % M
            index.append(block.reshape(-1))
            shapes.append((base.shape[0], K, len(units)))
        flat = _Gather.apply(self.table.weight, torch.cat(index))
        sizes = [n * k * u for n, k, u in shapes]
        return [part.view(shape).sum(1) for part, shape in zip(flat.split(sizes), shapes)]


class _Gather(torch.autograd.Function):
    """``weight[index]`` of a table (M,) with the index (n,) int32; the backward is one
    ``index_add`` into a zero (M,) gradient (``F.embedding``'s dense backward is several
    times slower on the CPU for the hundred thousand indices of a step)."""

    @staticmethod
    def forward(ctx, weight: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.size = weight.shape[0]
        return weight.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        zeros = grad.new_zeros(ctx.size)
        if grad.is_cuda:
            # index_add_ adds with atomics there, in no fixed order (a resumed run would not
            # continue exactly); index_put_'s accumulate sorts first. On the CPU index_add_
            # is in order already, and twice as fast.
            return zeros.index_put_((index,), grad, accumulate=True), None
        return zeros.index_add_(0, index, grad), None


class DirectHidden:
    """A language model's last-layer output with the history hashes of each position: what
    :meth:`LanguageModel.forward` returns in place of the hidden tensor when the model has
    direct connections. Indexing and reshaping apply to the leading (time, batch) axes of
    both.

    Args:
        hidden: (..., H); hashes: (..., K).
    """

    def __init__(self, hidden: Tensor, hashes: Tensor):
        self.hidden, self.hashes = hidden, hashes

    def __getitem__(self, key) -> "DirectHidden":
        return DirectHidden(self.hidden[key], self.hashes[key])

    @property
    def shape(self) -> torch.Size:
        return self.hidden.shape

    def flat(self) -> tuple[Tensor, Tensor]:
        """(N, H) hidden rows and their (N, K) hashes."""
        return (self.hidden.reshape(-1, self.hidden.shape[-1]),
                self.hashes.reshape(-1, self.hashes.shape[-1]))


__all__ = ["DirectConnections", "DirectFeatures", "DirectHidden", "history_hashes",
           "group_base", "MODULUS", "WORDS", "CLASSES", "MAX_ORDER"]

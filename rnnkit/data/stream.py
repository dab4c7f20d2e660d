"""Token caches on disk and the two ways a language model reads them.

- :func:`encode_to_cache` / :func:`open_cache`: a corpus split encoded once into a flat
  binary file of ids (uint16, or uint32 when ``vocab_size >= 65536``) with a JSON sidecar
  ``path + ".json"``, reopened as a read-only numpy memmap (:class:`TokenArray`).
- :class:`StreamBatches`: truncated BPTT over one long stream (Zaremba et al. 2014, the
  PyTorch word_language_model): the ids are cut into ``B`` contiguous streams and read in
  windows of ``T`` steps; the hidden state carries over from one window to the next.
- :class:`SentenceBatches`: each line an independent sequence (state reset per line),
  padded batches with lengths, shuffled per epoch.

Both batchers own their random generator and resume exactly from ``state_dict()``.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from rnnkit.data.tokenizers import chunked as _chunks
from rnnkit.files import atomic_write, read_json, write_json

CACHE_FORMAT = "rnnkit.token-cache"
CACHE_VERSION = 1
_CHUNK_LINES = 1024            # lines encoded per call of encode_lines
_FLUSH_IDS = 1 << 20           # ids buffered before they are appended to the file
_SCAN_IDS = 1 << 22            # ids scanned per step when finding line ends


def cache_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (``vocab_size < 65536``), else uint32."""
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


class TokenArray:
    """A flat, read-only array of token ids — usually a memmap of a cache file.

    ``len(a)`` is the number of ids; ``a[i]`` an ``int``; ``a[i:j]`` a (j-i,) LongTensor
    (only that slice is read); :meth:`take` gathers any index array.
    """

    def __init__(self, ids: np.ndarray, path: str | None = None):
        if ids.ndim != 1:
            raise ValueError(f"token ids must be 1-D, got shape {ids.shape}")
        self.ids = ids
        self.path = path

    @classmethod
    def from_ids(cls, ids: Sequence[int], vocab_size: int) -> TokenArray:
        """An in-memory array of ``ids`` (for tests and small texts)."""
        return cls(np.asarray(ids, dtype=cache_dtype(vocab_size)))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, index: int | slice) -> int | Tensor:
        if isinstance(index, slice):
            return torch.from_numpy(self.ids[index].astype(np.int64))
        return int(self.ids[index])

    def take(self, index: np.ndarray) -> Tensor:
        """Ids at ``index`` (any shape of int positions) as a LongTensor of the same shape."""
        return torch.from_numpy(self.ids[index].astype(np.int64))


def _sidecar(path: str) -> str:
    return path + ".json"


def _map(path: str, dtype: np.dtype, length: int) -> TokenArray:
    if length == 0:                      # numpy cannot map an empty file
        return TokenArray(np.zeros(0, dtype=dtype), path)
    return TokenArray(np.memmap(path, dtype=dtype, mode="r", shape=(length,)), path)


def encode_to_cache(tokenizer, lines: Iterable[str], path: str | os.PathLike, *,
                    source: str | None = None) -> TokenArray:
    """Encode ``lines`` with ``tokenizer.encode_line`` into the cache file ``path``.

    Ids are appended in chunks (memory stays bounded); the file is written under a
    temporary name and renamed, then the sidecar ``path + ".json"`` is written the same way
    (``format``, ``dtype``, ``length``, ``vocab_size``, ``fingerprint`` of the tokenizer,
    and ``source``, any string naming the input, e.g. ``CorpusSplit.fingerprint()``). An old
    sidecar is removed first, so a crash leaves no sidecar that describes other data.

    Returns the cache reopened as a memmap (see :func:`open_cache`).
    """
    path = os.fspath(path)
    dtype = cache_dtype(tokenizer.vocab_size)
    if os.path.exists(_sidecar(path)):
        os.remove(_sidecar(path))
    atomic_write(path, lambda tmp: _write_ids(tokenizer, lines, tmp, dtype))
    length = os.path.getsize(path) // dtype.itemsize
    write_json(_sidecar(path), {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "dtype": dtype.name,
        "length": length, "vocab_size": tokenizer.vocab_size,
        "fingerprint": tokenizer.fingerprint(), "source": source})
    return _map(path, dtype, length)


def _write_ids(tokenizer, lines: Iterable[str], file: str, dtype: np.dtype) -> None:
    """Encode ``lines`` into ``file``, appending every ``_FLUSH_IDS`` ids."""
    buffer = array("H" if dtype == np.uint16 else "I")
    with open(file, "wb") as f:
        for chunk in _chunks(lines, _CHUNK_LINES):
            for ids in tokenizer.encode_lines(chunk):
                buffer.extend(ids)
            if len(buffer) >= _FLUSH_IDS:
                _flush(buffer, dtype, f)
        _flush(buffer, dtype, f)


def _flush(buffer: array, dtype: np.dtype, f) -> None:
    np.frombuffer(buffer, dtype=dtype).tofile(f)
    del buffer[:]


def open_cache(path: str | os.PathLike, tokenizer, *,
               source: str | None = None) -> TokenArray | None:
    """Reopen a cache written by :func:`encode_to_cache` as a read-only memmap.

    Returns None when there is nothing valid to reuse: no file or sidecar, an unreadable
    sidecar, another tokenizer (fingerprint, vocab_size), another ``source``, or a file
    whose size does not match the recorded length.
    """
    path = os.fspath(path)
    if not (os.path.isfile(path) and os.path.isfile(_sidecar(path))):
        return None
    try:
        meta = read_json(_sidecar(path))
        dtype = np.dtype(meta["dtype"])
        length = int(meta["length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    expected = {"format": CACHE_FORMAT, "version": CACHE_VERSION,
                "vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint(),
                "source": source}
    if any(meta.get(k) != v for k, v in expected.items()):
        return None
    if (dtype != cache_dtype(tokenizer.vocab_size)
            or os.path.getsize(path) != length * dtype.itemsize):
        return None
    return _map(path, dtype, length)


# ---------------------------------------------------------------- random state helpers

def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _generator_state(g: torch.Generator) -> list[int]:
    return g.get_state().tolist()


def _set_generator_state(g: torch.Generator, state: list[int]) -> None:
    g.set_state(torch.tensor(state, dtype=torch.uint8))


def _check_state(name: str, d: dict, expected: dict) -> None:
    missing = [k for k in expected if k not in d]
    if missing:
        raise ValueError(f"{name} state_dict lacks {', '.join(missing)}")
    for key, value in expected.items():
        if d[key] != value:
            raise ValueError(f"{name} state_dict was saved with {key}={d[key]!r}, "
                             f"this one has {key}={value!r}")


def _as_token_array(tokens) -> TokenArray:
    if isinstance(tokens, TokenArray):
        return tokens
    if isinstance(tokens, np.ndarray):
        return TokenArray(tokens)
    raise ValueError("tokens must be a TokenArray or a 1-D numpy array, "
                     f"got {type(tokens).__name__}")


# ---------------------------------------------------------------- stream batches

class StreamBatches:
    """Truncated-BPTT windows over ``B`` contiguous streams of one long id array.

    The N ids are cut into ``batch_size`` streams of ``n = N // batch_size`` ids (the tail
    that fills no stream is dropped): stream ``b`` is ``ids[b*n : (b+1)*n]``. A window at
    position ``i`` of length ``T`` gives

        inputs[t, b]  = ids[b*n + i + t]        (T, B) long
        targets[t, b] = ids[b*n + i + t + 1]    (T, B) long

    and the next window starts at ``i + T``; the last one is shortened to end at ``n - 1``.
    Column ``b`` of one window continues column ``b`` of the previous one, so the hidden
    state is carried over (detached). Only the ids of a window are read from the memmap.

    ``random_length=True`` draws each window's length as in AWD-LSTM (Merity et al. 2018):
    ``N(bptt, 5)`` with probability 0.95, else ``N(bptt / 2, 5)``, truncated to an int and
    clipped to ``[5, bptt + 20]``, from this object's own ``torch.Generator`` (seeded by
    ``seed``). AWD-LSTM also scales the learning rate by ``T / bptt``; that is the caller's.

    Use :meth:`next_window` until it returns None, then :meth:`reset_epoch`;
    :meth:`state_dict` / :meth:`load_state_dict` resume exactly where it stopped.
    """

    def __init__(self, tokens: TokenArray | np.ndarray, batch_size: int, bptt: int, *,
                 random_length: bool = False, seed: int = 0):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(bptt, int) or bptt < 1:
            raise ValueError(f"bptt must be a positive integer, got {bptt!r}")
        self.tokens = _as_token_array(tokens)
        self.batch_size = batch_size
        self.bptt = bptt
        self.random_length = bool(random_length)
        self.stream_length = len(self.tokens) // batch_size
        if self.stream_length < 2:
            raise ValueError(f"{len(self.tokens)} tokens are too few for batch_size="
                             f"{batch_size} streams of at least 2 tokens")
        self._starts = np.arange(batch_size, dtype=np.int64) * self.stream_length   # (B,)
        self._generator = _generator(seed)
        self.position = 0
        self.epoch = 0
        self.processes = 1

    def read_columns(self, columns: Sequence[int], total: int) -> None:
        """Lay the ids out as ``total`` streams and read only ``columns`` of them (in that
        order) from now on: the share of one process of a distributed run, which reads
        nothing of the other columns. The window lengths (and their random draws) do not
        depend on the columns."""
        stream_length = len(self.tokens) // total
        if stream_length < 2:
            raise ValueError(f"{len(self.tokens)} tokens are too few for {total} streams of "
                             f"at least 2 tokens")
        self.stream_length = stream_length
        self._starts = np.asarray(columns, dtype=np.int64) * stream_length

    def shard(self, rank: int, processes: int) -> None:
        """Process ``rank`` of ``processes``, each with ``batch_size`` streams: the ids are
        laid out as ``processes × batch_size`` streams and this process reads its
        ``batch_size`` consecutive ones, so that the processes together see exactly the
        windows of one process with ``processes × batch_size`` streams."""
        b = self.batch_size
        if len(self.tokens) // (processes * b) < 2:
            raise ValueError(f"{len(self.tokens)} tokens are too few for {processes} processes "
                             f"× batch size {b} = {processes * b} streams of at least 2 tokens; "
                             f"lower --batch-size or --nproc")
        self.read_columns(range(rank * b, (rank + 1) * b), processes * b)
        self.processes = processes

    def _window_length(self) -> int:
        if not self.random_length:
            return self.bptt
        g = self._generator
        mean = self.bptt if torch.rand(1, generator=g).item() < 0.95 else self.bptt / 2
        length = int(torch.normal(float(mean), 5.0, size=(1,), generator=g).item())
        return min(max(5, length), self.bptt + 20)

    def next_window(self) -> tuple[Tensor, Tensor] | None:
        """The next ``(inputs (T, B), targets (T, B))`` long tensors, or None at epoch end."""
        remaining = self.stream_length - 1 - self.position
        if remaining <= 0:
            return None
        length = min(self._window_length(), remaining)
        offsets = np.arange(length + 1, dtype=np.int64)[:, None]          # (T+1, 1)
        ids = self.tokens.take(self._starts[None, :] + self.position + offsets)  # (T+1, B)
        self.position += length
        return ids[:-1], ids[1:]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The remaining windows of this epoch."""
        while (window := self.next_window()) is not None:
            yield window

    def reset_epoch(self) -> None:
        """Start the next epoch at the beginning of the streams (the generator runs on)."""
        self.position = 0
        self.epoch += 1

    def state_dict(self) -> dict:
        """JSON-serialisable position, epoch, generator state and the settings it assumes."""
        return {"position": self.position, "epoch": self.epoch,
                "generator": _generator_state(self._generator),
                "batch_size": self.batch_size, "bptt": self.bptt,
                "random_length": self.random_length, "stream_length": self.stream_length}

    def load_state_dict(self, d: dict) -> None:
        """Continue from ``d``; the settings and the data size must match."""
        _check_state("StreamBatches", d, {
            "batch_size": self.batch_size, "bptt": self.bptt,
            "random_length": self.random_length, "stream_length": self.stream_length})
        if not 0 <= int(d["position"]) < self.stream_length:
            raise ValueError(f"StreamBatches state_dict position {d['position']} is outside "
                             f"the streams of length {self.stream_length}")
        _set_generator_state(self._generator, d["generator"])
        self.position = int(d["position"])
        self.epoch = int(d["epoch"])


# ---------------------------------------------------------------- sentence batches

class TokenLines:
    """The lines of a token array as a lazy sequence: line ``k`` is a 1-D int64 numpy array
    of its ids, ending with ``end_id`` (the tokenizer's ``line_end_id``).

    Finding the line ends scans the array once in chunks; only the (lines + 1,) offsets
    are kept in memory. Trailing ids after the last ``end_id`` are an error.
    """

    def __init__(self, tokens: TokenArray | np.ndarray, end_id: int):
        self.tokens = _as_token_array(tokens)
        ends = [np.flatnonzero(self.tokens.ids[s:s + _SCAN_IDS] == end_id) + s
                for s in range(0, len(self.tokens), _SCAN_IDS)]
        ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
        last = int(ends[-1]) + 1 if len(ends) else 0
        if last != len(self.tokens):
            raise ValueError(f"token array{_where(self.tokens)} does not end with the line "
                             f"end id {end_id} ({len(self.tokens) - last} trailing ids)")
        self._offsets = np.concatenate([[0], ends + 1]).astype(np.int64)   # (lines + 1,)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, k: int) -> np.ndarray:
        return self.tokens.ids[self._offsets[k]:self._offsets[k + 1]].astype(np.int64)


def _where(tokens: TokenArray) -> str:
    return f" {tokens.path}" if tokens.path else ""


class ExampleBatches:
    """Batches of example indices for the supervised tasks (classify, tag, translate).

    Each epoch the examples are shuffled by this object's own ``torch.Generator`` (seeded by
    ``seed``; ``shuffle=False`` keeps file order and never sorts). With ``lengths`` (one per
    example) batches hold examples of similar length, so that little padding is computed:
    the shuffled order is cut into pools of ``pool`` batches, each pool is sorted by length
    and cut into batches, and the batches are shuffled. ``collate`` turns a list of indices
    into the batch that :meth:`next_batch` returns (the indices themselves by default).

    Use :meth:`next_batch` until it returns None, then :meth:`reset_epoch`;
    :meth:`state_dict` / :meth:`load_state_dict` resume exactly where it stopped.
    """

    def __init__(self, num_examples: int, batch_size: int, *, lengths: Sequence[int] | None = None,
                 shuffle: bool = True, seed: int = 0, pool: int = 50, collate=None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if num_examples < 1:
            raise ValueError("ExampleBatches needs at least one example")
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"lengths: {len(lengths)} given for {num_examples} examples")
        self.num_examples, self.batch_size = num_examples, batch_size
        self.lengths = None if lengths is None else torch.as_tensor(lengths, dtype=torch.long)
        self.shuffle, self.pool = bool(shuffle), pool
        self.collate = collate or (lambda indices: indices)
        self._generator = _generator(seed)
        self.epoch = 0
        self.rank, self.processes = 0, 1
        self.share_weight = 1.0          # 0: this process's share of the batch is a stand-in
        self._start_epoch()

    def shard(self, rank: int, processes: int) -> None:
        """Process ``rank`` of ``processes``, each with ``batch_size`` examples: the batches
        are those of one process with ``processes × batch_size`` examples, each cut into
        ``processes`` shares (``indices[rank::processes]``, so that the shares of a batch
        sorted by length are alike). When a batch (the last of an epoch) has fewer examples
        than processes, a process without any gets the batch's first example as a
        stand-in with ``share_weight`` 0: its loss must count for nothing."""
        self.rank, self.processes = rank, processes
        self._epoch_state_restart()

    def _epoch_state_restart(self) -> None:
        """Redraw the current epoch's batches from the generator state at its start."""
        _set_generator_state(self._generator, self._epoch_state)
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_state = _generator_state(self._generator)
        n, size = self.num_examples, self.batch_size * self.processes
        if not self.shuffle:
            order = torch.arange(n)
            self._batches = [order[k:k + size].tolist() for k in range(0, n, size)]
        else:
            order = torch.randperm(n, generator=self._generator)
            batches = []
            step = size * self.pool if self.lengths is not None else n
            for start in range(0, n, step):
                chunk = order[start:start + step]
                if self.lengths is not None:            # stable sort: ties keep the shuffle
                    chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
                batches.extend(chunk[k:k + size].tolist() for k in range(0, len(chunk), size))
            if self.lengths is not None:
                perm = torch.randperm(len(batches), generator=self._generator).tolist()
                batches = [batches[k] for k in perm]
            self._batches = batches
        self.batch_index = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._batches)

    def next_batch(self):
        """``collate`` of the next batch's example indices, or None at the end of the epoch."""
        if self.batch_index >= len(self._batches):
            return None
        indices = self._batches[self.batch_index]
        self.batch_index += 1
        if self.processes > 1:
            share = indices[self.rank::self.processes]
            self.share_weight = 1.0 if share else 0.0
            indices = share or indices[:1]
        return self.collate(indices)

    def reset_epoch(self) -> None:
        """Start the next epoch with a new order."""
        self.epoch += 1
        self._start_epoch()

    def state_dict(self) -> dict:
        """JSON-serialisable epoch, batch index, generator state at the epoch's start, settings."""
        return {"epoch": self.epoch, "batch_index": self.batch_index,
                "generator": self._epoch_state, "batch_size": self.batch_size,
                "shuffle": self.shuffle, "num_examples": self.num_examples}

    def load_state_dict(self, d: dict) -> None:
        """Continue from ``d``: the epoch's batches are redrawn from the saved generator state."""
        _check_state("ExampleBatches", d, {"batch_size": self.batch_size,
                                           "shuffle": self.shuffle,
                                           "num_examples": self.num_examples})
        _set_generator_state(self._generator, d["generator"])
        self._start_epoch()
        self.epoch = int(d["epoch"])
        self.batch_index = int(d["batch_index"])


def collate_lines(lines: Sequence[Tensor], end_id: int, pad_id: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Lines of ids, each ending with ``end_id`` -> (inputs (T, B), targets (T, B), lengths
    (B,)) as :class:`SentenceBatches` describes them."""
    lengths = torch.tensor([len(line) for line in lines], dtype=torch.long)       # (B,)
    T, B = int(lengths.max()), len(lines)
    inputs = torch.full((T, B), pad_id, dtype=torch.long)
    targets = torch.full((T, B), pad_id, dtype=torch.long)
    for b, line in enumerate(lines):
        targets[:len(line), b] = line
        inputs[0, b] = end_id
        inputs[1:len(line), b] = line[:-1]
    return inputs, targets, lengths


class SentenceBatches:
    """Padded batches of whole lines, for models whose state resets at every line.

    ``lines[k]`` is a sequence of ids ending with ``end_id`` (``<eos>``; at char level the
    id of ``"\\n"``). Each epoch the line order is shuffled by this object's own
    ``torch.Generator`` (seeded by ``seed``; ``shuffle=False`` keeps file order) and cut into
    batches of ``batch_size`` lines (the last may be smaller). A batch of lines
    ``w_1 … w_L`` (``w_L = end_id``) gives, with ``T`` its longest line:

        inputs  (T, B) long: ``end_id, w_1, …, w_{L-1}`` — the previous line's end is the
                start symbol, so every token of the line, its final end included, is predicted;
        targets (T, B) long: ``w_1, …, w_L``;
        lengths (B,)   long: ``L`` of each line;

    both padded with ``pad_id`` after position ``L`` (use it as the loss's ``ignore_index``).

    Use :meth:`next_batch` until it returns None, then :meth:`reset_epoch`;
    :meth:`state_dict` / :meth:`load_state_dict` resume exactly where it stopped.
    """

    def __init__(self, lines: Sequence[Sequence[int]], batch_size: int, *, end_id: int,
                 pad_id: int, shuffle: bool = True, seed: int = 0):
        if len(lines) == 0:
            raise ValueError("SentenceBatches needs at least one line")
        self.lines = lines
        self.end_id = end_id
        self.pad_id = pad_id
        # the order, the epochs and their resumable state are ExampleBatches' (unbucketed)
        self._batches = ExampleBatches(len(lines), batch_size, shuffle=shuffle, seed=seed,
                                       collate=self._collate)

    @property
    def batch_size(self) -> int:
        return self._batches.batch_size

    @property
    def epoch(self) -> int:
        return self._batches.epoch

    @property
    def share_weight(self) -> float:
        return self._batches.share_weight

    def shard(self, rank: int, processes: int) -> None:
        """Take this process's share of every batch (see :meth:`ExampleBatches.shard`)."""
        self._batches.shard(rank, processes)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._batches)

    def _line(self, k: int) -> Tensor:
        line = torch.as_tensor(np.asarray(self.lines[k], dtype=np.int64))      # (L,)
        if line.numel() == 0:
            raise ValueError(f"line {k} is empty; every line must end with id {self.end_id}")
        if int(line[-1]) != self.end_id:
            raise ValueError(f"line {k} ends with id {int(line[-1])}, expected the line end "
                             f"id {self.end_id}")
        return line

    def _collate(self, picked: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        return collate_lines([self._line(k) for k in picked], self.end_id, self.pad_id)

    def next_batch(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """The next ``(inputs (T, B), targets (T, B), lengths (B,))``, or None at epoch end."""
        return self._batches.next_batch()

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The remaining batches of this epoch."""
        while (batch := self.next_batch()) is not None:
            yield batch

    def reset_epoch(self) -> None:
        """Start the next epoch with a new order."""
        self._batches.reset_epoch()

    def state_dict(self) -> dict:
        """JSON-serialisable epoch, batch index, generator state at the epoch's start, settings."""
        return self._batches.state_dict()

    def load_state_dict(self, d: dict) -> None:
        """Continue from ``d``: the epoch's order is redrawn from the saved generator state."""
        self._batches.load_state_dict(d)

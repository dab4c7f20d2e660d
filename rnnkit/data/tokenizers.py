"""Tokenizers for language modelling: characters, words, and byte-level BPE.

All three share one interface (the :class:`Tokenizer` protocol) and one fixed order of
special tokens at the start of the vocabulary:

=========  ===========  ===========  ===========
id         word         char         bpe
=========  ===========  ===========  ===========
0          ``<pad>``    ``<pad>``    ``<pad>``
1          ``<unk>``    ``<unk>``    ``<unk>``
2          ``<eos>``    ``"\\n"``     ``<eos>``
3 …        words        characters   subwords
=========  ===========  ===========  ===========

so ``line_end_id`` (the id that closes every encoded line) is 2 at every level (the ids are
declared in :mod:`rnnkit.special`, which the models import too). The char level has no
``<eos>``: the newline is an ordinary character of its vocabulary (``eos_id is None``). Words and characters are ordered by training count, descending, then
by the token itself.

Corpus lines are encoded with :meth:`Tokenizer.encode_line` — the tokens of the line then
the line end — and unknown tokens become ``<unk>``. Free text such as a generation prompt
is encoded with :meth:`Tokenizer.encode`: a newline in the text becomes the line end, no
line end is appended, and by default (``unknown_policy="error"``) a token the vocabulary
lacks is a ``ValueError`` that lists it. Literal ``<unk>`` / ``<eos>`` in the text (PTB
writes ``<unk>`` for rare words) map to their ids; a literal ``<pad>`` maps to ``<unk>``,
as padding must never be a real token.

``counts[i]`` is how often id ``i`` occurs in the encoded training lines (``<eos>``: once
per line; ``<unk>``: every replaced token; ``<pad>``: 0). Mikolov's class-factorised
softmax builds its frequency classes from these counts.

Saving writes JSON only — ``tokenizer.json``, and for BPE also the HuggingFace tokenizer's
own ``hf_tokenizer.json`` — atomically (temporary file, then rename); never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Protocol

import numpy as np

from rnnkit.files import read_json, write_json, write_text
from rnnkit.special import EOS, LINE_END_ID, PAD, PAD_ID, UNK, UNK_ID  # re-exported here

LEVELS = ("char", "word", "bpe")
UNKNOWN_POLICIES = ("error", "unk")
TOKENIZER_FILE = "tokenizer.json"
HF_FILE = "hf_tokenizer.json"
FORMAT = "rnnkit.tokenizer"
FORMAT_VERSION = 1
BPE_MIN_VOCAB = 256 + 3        # the byte alphabet and the three special tokens
_MAX_LISTED = 20               # unknown tokens named in an error message


class Tokenizer(Protocol):
    """What every tokenizer offers. Ids are ``int`` in ``[0, vocab_size)``."""

    level: str                 # "char" | "word" | "bpe"
    pad_id: int                # 0
    unk_id: int                # 1
    eos_id: int | None         # 2; None at char level
    line_end_id: int           # 2: eos_id, or the id of "\n" at char level
    counts: list[int]          # (V,) training count of each id

    @property
    def vocab_size(self) -> int: ...
    def encode_line(self, line: str) -> list[int]: ...
    def encode_lines(self, lines: Sequence[str]) -> list[list[int]]: ...
    def encode(self, text: str, unknown_policy: str = "error") -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def token(self, id: int) -> str: ...
    def fingerprint(self) -> str: ...
    def save(self, directory: str | os.PathLike) -> None: ...


# ---------------------------------------------------------------- shared helpers

def _check_policy(unknown_policy: str) -> None:
    if unknown_policy not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown_policy must be 'error' or 'unk', got {unknown_policy!r}")


def _raise_unknown(what: str, unknown: list[str], policy: str) -> None:
    if not unknown or policy == "unk":
        return
    distinct = list(dict.fromkeys(unknown))
    listed = ", ".join(repr(u) for u in distinct[:_MAX_LISTED])
    more = f" and {len(distinct) - _MAX_LISTED} more" if len(distinct) > _MAX_LISTED else ""
    raise ValueError(f"{len(distinct)} {what} not in the vocabulary: {listed}{more} "
                     "(pass unknown_policy='unk' to map them to <unk>)")


def _check_id(i: int, vocab_size: int) -> int:
    if not 0 <= i < vocab_size:
        raise ValueError(f"token id {i} out of range for vocab_size {vocab_size}")
    return int(i)


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode("utf-8")).hexdigest()


def _rank(counter: Counter, min_count: int, max_size: int | None) -> list[tuple[str, int]]:
    """Tokens with count >= min_count, by count descending then token; at most max_size."""
    ranked = sorted(((t, c) for t, c in counter.items() if c >= min_count),
                    key=lambda tc: (-tc[1], tc[0]))
    return ranked if max_size is None else ranked[:max_size]


class _Vocab:
    """Token strings and their counts; the lookup maps a string to its id."""

    def __init__(self, tokens: list[str], counts: list[int], head: tuple[str, ...], where: str):
        _check_vocab(tokens, counts, head, where)
        self.tokens = list(tokens)
        self.counts = [int(c) for c in counts]
        self.lookup = {t: i for i, t in enumerate(self.tokens)}


def _check_counts(counts, n: int, where: str) -> None:
    if not isinstance(counts, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise ValueError(f"{where}: 'counts' must be a list of non-negative integers")
    if len(counts) != n:
        raise ValueError(f"{where}: {len(counts)} counts for {n} tokens")


def _check_vocab(tokens, counts, head: tuple[str, ...], where: str) -> None:
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{where}: 'tokens' must be a list of strings")
    _check_counts(counts, len(tokens), where)
    for i, expected in enumerate(head):
        if i >= len(tokens) or tokens[i] != expected:
            got = repr(tokens[i]) if i < len(tokens) else "missing"
            raise ValueError(f"{where}: token {i} is {got}, expected {expected!r}")
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise ValueError(f"{where}: token {t!r} appears twice (ids {seen[t]} and {i})")
        seen[t] = i


def _save_json(directory: str | os.PathLike, payload: dict) -> None:
    write_json(os.path.join(directory, TOKENIZER_FILE),
               {"format": FORMAT, "version": FORMAT_VERSION, **payload})


class _TokenList:
    """What the word and char tokenizers share: a vocabulary that is a list of strings."""

    _vocab: _Vocab

    @property
    def vocab_size(self) -> int:
        return len(self._vocab.tokens)

    def encode_lines(self, lines: Sequence[str]) -> list[list[int]]:
        """:meth:`encode_line` for each line."""
        return [self.encode_line(line) for line in lines]

    def token(self, id: int) -> str:
        """The vocabulary string of ``id``."""
        return self._vocab.tokens[_check_id(int(id), self.vocab_size)]

    def fingerprint(self) -> str:
        """sha256 (hex) of the level and the token list: equal fingerprints, equal ids."""
        return _sha256([self.level, self._vocab.tokens])

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``directory/tokenizer.json``."""
        _save_json(directory, {"level": self.level, "tokens": self._vocab.tokens,
                               "counts": self.counts})


# ---------------------------------------------------------------- word level

class WordTokenizer(_TokenList):
    """Whitespace-separated words; ``<eos>`` closes each line.

    Args:
        tokens: (V,) the vocabulary, starting ``<pad>, <unk>, <eos>``.
        counts: (V,) training count of each token.
    """

    level = "word"
    pad_id, unk_id, eos_id, line_end_id = PAD_ID, UNK_ID, LINE_END_ID, LINE_END_ID

    def __init__(self, tokens: list[str], counts: list[int], *, where: str = "word vocabulary"):
        self._vocab = _Vocab(tokens, counts, (PAD, UNK, EOS), where)
        self._lookup = dict(self._vocab.lookup)
        self._lookup[PAD] = UNK_ID
        self.counts = self._vocab.counts

    def encode_line(self, line: str) -> list[int]:
        """One corpus line -> ids of its words (unknown: ``<unk>``), then ``<eos>``."""
        get = self._lookup.get
        return [get(w, UNK_ID) for w in line.split()] + [LINE_END_ID]

    def encode_words(self, words: Iterable[str]) -> list[int]:
        """A list of words (which may hold spaces) -> ids; unknown words -> ``<unk>``."""
        get = self._lookup.get
        return [get(w, UNK_ID) for w in words]

    def encode(self, text: str, unknown_policy: str = "error") -> list[int]:
        """Free text -> ids; each newline becomes ``<eos>``, none is appended.

        With ``unknown_policy="error"`` a word not in the vocabulary raises ``ValueError``
        listing the unknown words; with ``"unk"`` it becomes ``<unk>``.
        """
        _check_policy(unknown_policy)
        ids: list[int] = []
        unknown: list[str] = []
        for k, line in enumerate(text.split("\n")):
            if k:
                ids.append(LINE_END_ID)
            for w in line.split():
                i = self._lookup.get(w)
                if i is None:
                    unknown.append(w)
                    i = UNK_ID
                ids.append(i)
        _raise_unknown("word(s)", unknown, unknown_policy)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text: words joined by spaces, ``<eos>`` as a newline, ``<pad>`` dropped."""
        lines: list[list[str]] = [[]]
        for i in ids:
            i = _check_id(int(i), self.vocab_size)
            if i == LINE_END_ID:
                lines.append([])
            elif i != PAD_ID:
                lines[-1].append(self._vocab.tokens[i])
        return "\n".join(" ".join(words) for words in lines)


def build_word_tokenizer(lines: Iterable[str], *, min_count: int = 1,
                         max_size: int | None = None) -> WordTokenizer:
    """Word vocabulary from training lines (one pass): words with count >= ``min_count``,
    the ``max_size`` most frequent at most (specials not counted); the rest is ``<unk>``."""
    counter: Counter = Counter()
    n_lines = 0
    for line in lines:
        counter.update(line.split())
        n_lines += 1
    return word_tokenizer_from_counts(counter, n_lines, min_count=min_count, max_size=max_size)


def word_tokenizer_from_counts(counter: Counter, n_lines: int = 0, *, min_count: int = 1,
                               max_size: int | None = None) -> WordTokenizer:
    """Word vocabulary from word counts (e.g. the words of tagged sentences, which may hold
    spaces): as :func:`build_word_tokenizer`, with ``n_lines`` line ends counted for
    ``<eos>``. ``counter`` is not changed."""
    counter = Counter(counter)
    n_unk = counter.pop(UNK, 0) + counter.pop(PAD, 0)
    n_eos = n_lines + counter.pop(EOS, 0)
    kept = _rank(counter, min_count, max_size)
    n_unk += sum(counter.values()) - sum(c for _, c in kept)
    return WordTokenizer([PAD, UNK, EOS] + [w for w, _ in kept],
                         [0, n_unk, n_eos] + [c for _, c in kept])


# ---------------------------------------------------------------- char level

class CharTokenizer(_TokenList):
    """Single characters; the newline is a character of the vocabulary and closes each line.

    Args:
        tokens: (V,) the vocabulary, starting ``<pad>, <unk>, "\\n"``, then one character each.
        counts: (V,) training count of each token.
    """

    level = "char"
    pad_id, unk_id, eos_id, line_end_id = PAD_ID, UNK_ID, None, LINE_END_ID

    def __init__(self, tokens: list[str], counts: list[int], *, where: str = "char vocabulary"):
        self._vocab = _Vocab(tokens, counts, (PAD, UNK, "\n"), where)
        for i, t in enumerate(tokens[3:], start=3):
            if len(t) != 1:
                raise ValueError(f"{where}: token {i} is {t!r}, expected one character")
        self.counts = self._vocab.counts

    def encode_line(self, line: str) -> list[int]:
        """One corpus line -> ids of its characters (unknown: ``<unk>``), then ``"\\n"``."""
        get = self._vocab.lookup.get
        return [get(c, UNK_ID) for c in line] + [LINE_END_ID]

    def encode(self, text: str, unknown_policy: str = "error") -> list[int]:
        """Free text -> one id per character (newlines included, none appended).

        With ``unknown_policy="error"`` characters the model never saw raise ``ValueError``
        listing them; with ``"unk"`` they become ``<unk>``.
        """
        _check_policy(unknown_policy)
        get = self._vocab.lookup.get
        ids = [get(c, UNK_ID) for c in text]
        unknown = [c for c, i in zip(text, ids) if i == UNK_ID]
        _raise_unknown("character(s)", unknown, unknown_policy)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text by concatenation; ``<pad>`` dropped, ``<unk>`` as U+FFFD."""
        out = []
        for i in ids:
            i = _check_id(int(i), self.vocab_size)
            if i == UNK_ID:
                out.append("\ufffd")
            elif i != PAD_ID:
                out.append(self._vocab.tokens[i])
        return "".join(out)


def build_char_tokenizer(lines: Iterable[str], *, min_count: int = 1,
                         max_size: int | None = None) -> CharTokenizer:
    """Character vocabulary from training lines (one pass): every character with count >=
    ``min_count``, the ``max_size`` most frequent at most (``<pad>``, ``<unk>``, ``"\\n"``
    not counted; ``"\\n"`` is always kept); the rest is ``<unk>``."""
    counter: Counter = Counter()
    n_lines = 0
    for line in lines:
        counter.update(line)
        n_lines += 1
    n_newline = n_lines + counter.pop("\n", 0)
    kept = _rank(counter, min_count, max_size)
    n_unk = sum(counter.values()) - sum(c for _, c in kept)
    return CharTokenizer([PAD, UNK, "\n"] + [c for c, _ in kept],
                         [0, n_unk, n_newline] + [n for _, n in kept])


# ---------------------------------------------------------------- byte-level BPE

class BpeTokenizer:
    """Byte-level BPE (HuggingFace ``tokenizers``); ``<eos>`` closes each line.

    Every UTF-8 text encodes without ``<unk>`` and decodes back exactly (the byte alphabet
    is always in the vocabulary). ``token(id)`` is the byte-level symbol (``"Ġthe"``).

    Args:
        hf: a ``tokenizers.Tokenizer`` whose ids 0, 1, 2 are ``<pad>, <unk>, <eos>``.
        counts: (V,) training count of each id.
    """

    level = "bpe"
    pad_id, unk_id, eos_id, line_end_id = PAD_ID, UNK_ID, LINE_END_ID, LINE_END_ID

    def __init__(self, hf, counts: list[int], *, where: str = "bpe tokenizer"):
        specials = [hf.token_to_id(t) for t in (PAD, UNK, EOS)]
        if specials != [PAD_ID, UNK_ID, LINE_END_ID]:
            raise ValueError(f"{where}: ids of <pad>, <unk>, <eos> are {specials}, "
                             "expected [0, 1, 2]")
        _check_counts(counts, hf.get_vocab_size(), where)
        self._hf = hf
        self.counts = [int(c) for c in counts]

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size()

    def _ids(self, encoding) -> list[int]:
        return [UNK_ID if i == PAD_ID else i for i in encoding.ids]

    def encode_line(self, line: str) -> list[int]:
        """One corpus line -> subword ids, then ``<eos>``."""
        return self._ids(self._hf.encode(line, add_special_tokens=False)) + [LINE_END_ID]

    def encode_lines(self, lines: Sequence[str]) -> list[list[int]]:
        """:meth:`encode_line` for each line, encoded as one batch (in parallel)."""
        encodings = self._hf.encode_batch(list(lines), add_special_tokens=False)
        return [self._ids(e) + [LINE_END_ID] for e in encodings]

    def encode(self, text: str, unknown_policy: str = "error") -> list[int]:
        """Free text -> subword ids; each newline becomes ``<eos>``, none is appended.

        Byte-level BPE has no unknown input, so ``unknown_policy`` is only checked.
        """
        _check_policy(unknown_policy)
        ids: list[int] = []
        for k, enc in enumerate(self._hf.encode_batch(text.split("\n"),
                                                      add_special_tokens=False)):
            if k:
                ids.append(LINE_END_ID)
            ids.extend(self._ids(enc))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text through the byte-level decoder; ``<eos>`` as a newline, ``<pad>`` dropped."""
        segments: list[list[int]] = [[]]
        for i in ids:
            i = _check_id(int(i), self.vocab_size)
            if i == LINE_END_ID:
                segments.append([])
            elif i != PAD_ID:
                segments[-1].append(i)
        return "\n".join(self._hf.decode(s, skip_special_tokens=False) if s else ""
                         for s in segments)

    def token(self, id: int) -> str:
        """The byte-level symbol of ``id`` (``"Ġthe"`` for " the")."""
        return self._hf.id_to_token(_check_id(int(id), self.vocab_size))

    def fingerprint(self) -> str:
        """sha256 (hex) of the vocabulary, merges and special tokens."""
        spec = json.loads(self._hf.to_str())
        added = [(a["id"], a["content"]) for a in spec.get("added_tokens", [])]
        return _sha256([self.level, sorted(spec["model"]["vocab"].items()),
                        spec["model"]["merges"], added])

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``directory/hf_tokenizer.json`` (HuggingFace's format) and ``tokenizer.json``."""
        write_text(os.path.join(directory, HF_FILE), self._hf.to_str(pretty=True))
        _save_json(directory, {"level": self.level, "hf_tokenizer": HF_FILE,
                               "counts": self.counts})


def _new_hf_bpe():
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    hf = HFTokenizer(models.BPE(unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def build_bpe_tokenizer(lines: Iterable[str], *, vocab_size: int = 8000,
                        min_count: int = 1) -> BpeTokenizer:
    """Train byte-level BPE on the lines, then count the ids of the encoded lines.

    ``lines`` is read twice (merges, then counts), so it must be re-iterable: a list or a
    ``CorpusSplit``, not a one-shot iterator. ``min_count`` is the trainer's minimum pair
    frequency. The result may have fewer than ``vocab_size`` ids on a small corpus.
    """
    from tokenizers import pre_tokenizers, trainers
    if iter(lines) is lines:
        raise ValueError("level='bpe' reads the training lines twice (merges, then counts): "
                         "pass a list or a CorpusSplit, not a one-shot iterator")
    if vocab_size < BPE_MIN_VOCAB:
        raise ValueError(f"bpe_vocab_size must be at least {BPE_MIN_VOCAB} (256 bytes and "
                         f"3 special tokens), got {vocab_size}")
    hf = _new_hf_bpe()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_count,
                                  special_tokens=[PAD, UNK, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(iter(lines), trainer)
    tok = BpeTokenizer(hf, [0] * hf.get_vocab_size())
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    for chunk in chunked(lines, 1024):
        ids = np.fromiter(chain.from_iterable(tok.encode_lines(chunk)), dtype=np.int64)
        counts += np.bincount(ids, minlength=tok.vocab_size)
    return BpeTokenizer(hf, counts.tolist())


def chunked(lines: Iterable[str], size: int):
    """Lists of up to ``size`` consecutive lines."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------- one entry point

def build_tokenizer(level: str, lines: Iterable[str], *, min_count: int = 1,
                    max_size: int | None = None, bpe_vocab_size: int = 8000) -> Tokenizer:
    """Build a tokenizer of ``level`` ("char" | "word" | "bpe") from training lines.

    Args:
        lines: the training lines (``str`` without newline), streamed — e.g. a
            ``CorpusSplit``. Word and char read them once; bpe reads them twice.
        min_count: word/char: tokens seen fewer times become ``<unk>``; bpe: minimum
            frequency of a merged pair.
        max_size: word/char: keep at most this many most frequent tokens besides the
            fixed ones (``<pad>``, ``<unk>``, and ``<eos>`` or ``"\\n"``). Not for bpe.
        bpe_vocab_size: bpe: target vocabulary size (at least 259).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    if max_size is not None and (not isinstance(max_size, int) or max_size < 0):
        raise ValueError(f"max_size must be None or an integer >= 0, got {max_size!r}")
    if level == "bpe":
        if max_size is not None:
            raise ValueError("max_size applies to char and word levels; for bpe "
                             "set bpe_vocab_size")
        return build_bpe_tokenizer(lines, vocab_size=bpe_vocab_size, min_count=min_count)
    build = build_word_tokenizer if level == "word" else build_char_tokenizer
    return build(lines, min_count=min_count, max_size=max_size)


def _load_bpe(directory: str, data: dict, file: str) -> BpeTokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    name = data.get("hf_tokenizer")
    if not isinstance(name, str) or os.path.basename(name) != name:
        raise ValueError(f"{file}: 'hf_tokenizer' must be a file name, got {name!r}")
    hf_file = os.path.join(directory, name)
    if not os.path.isfile(hf_file):
        raise ValueError(f"{hf_file}: no such file")
    try:
        hf = HFTokenizer.from_file(hf_file)
    except Exception as e:  # the Rust parser raises a bare Exception
        raise ValueError(f"{hf_file}: not a valid HuggingFace tokenizer file ({e})") from None
    return BpeTokenizer(hf, data.get("counts"), where=file)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer saved by ``save(directory)``.

    Raises ``ValueError`` naming the file for a missing or corrupt file, an unknown level,
    or a vocabulary that breaks the fixed special-token order.
    """
    directory = os.fspath(directory)
    file = os.path.join(directory, TOKENIZER_FILE)
    data = read_json(file)
    if data.get("format") != FORMAT:
        raise ValueError(f"{file}: not an rnnkit tokenizer (format {data.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"{file}: unsupported version {data.get('version')!r} "
                         f"(expected {FORMAT_VERSION})")
    level = data.get("level")
    if level not in LEVELS:
        raise ValueError(f"{file}: unknown level {level!r} (expected one of {', '.join(LEVELS)})")
    for key in ("counts",) + (("tokens",) if level in ("word", "char") else ()):
        if key not in data:
            raise ValueError(f"{file}: missing field {key!r}")
    if level == "word":
        return WordTokenizer(data["tokens"], data["counts"], where=file)
    if level == "char":
        return CharTokenizer(data["tokens"], data["counts"], where=file)
    return _load_bpe(directory, data, file)

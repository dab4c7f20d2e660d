"""Plain-text corpora: strict UTF-8 line reading and train/valid/test splits.

Every corpus is read as a stream of lines, never as one string, so a corpus larger than
memory works. A *line* is the text between two ``\\n`` bytes, without the ``\\n``; a
trailing ``\\r`` (Windows line ending) is dropped, a final line without ``\\n`` counts, and
a UTF-8 byte-order mark at the start of the file is dropped. Bad input is a ``ValueError``
that names the file and the exact byte offset:

- ``"{path}: no such file"``, ``"{path}: file is empty"``,
- ``"{path}: looks binary (NUL byte at offset {n})"``,
- ``"{path}: not valid UTF-8 at byte offset {n} (byte 0x{b:02x})"``.

A corpus is described by :class:`CorpusFiles`: three :class:`CorpusSplit` ranges
``(path, line_start, line_stop)`` over files on disk, so nothing is copied. Iterating a
split streams its lines, as often as needed (a BPE tokenizer reads the training split twice).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

_SNIFF_BYTES = 8192            # a NUL byte this early means the file is binary (git's rule)
_BOM = "\ufeff"
#: The words that name a split in a file name, for every task (see :func:`split_words_of`).
SPLIT_WORDS = {"train": ("train",), "valid": ("valid", "val", "dev"), "test": ("test",)}


def _open_binary(path: str | os.PathLike):
    """Open ``path`` for reading bytes after the checks that need no full pass."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, expected a text file")
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: file is empty")
    f = open(path, "rb")
    head = f.read(_SNIFF_BYTES)
    nul = head.find(b"\x00")
    if nul >= 0:
        f.close()
        raise ValueError(f"{path}: looks binary (NUL byte at offset {nul})")
    f.seek(0)
    return f


def _decode_line(path: str, raw: bytes, offset: int) -> str:
    """Decode one raw line (``\\n`` included) that starts at byte ``offset`` of the file."""
    nul = raw.find(b"\x00")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if nul < 0 or e.start < nul:
            raise ValueError(f"{path}: not valid UTF-8 at byte offset {offset + e.start} "
                             f"(byte 0x{raw[e.start]:02x})") from None
        text = ""
    if nul >= 0:
        raise ValueError(f"{path}: looks binary (NUL byte at offset {offset + nul})")
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """Stream the lines of a UTF-8 text file, strictly decoded, without their line endings.

    Reads one line at a time (memory is bounded by the longest line). Raises ``ValueError``
    naming the file for a missing, empty or binary file, and for invalid UTF-8 with the
    exact byte offset of the first bad byte (the error comes when the reader reaches it).
    """
    path = os.fspath(path)
    with _open_binary(path) as f:
        offset = 0
        for k, raw in enumerate(f):
            line = _decode_line(path, raw, offset)
            if k == 0 and line.startswith(_BOM):
                line = line[1:]
            offset += len(raw)
            yield line


def check_text_file(path: str | os.PathLike) -> None:
    """Read the whole file once (streaming) and raise ``ValueError`` if it is not UTF-8 text."""
    for _ in iter_lines(path):
        pass


def count_lines(path: str | os.PathLike) -> int:
    """Number of lines of a text file (validating it, see :func:`iter_lines`)."""
    return sum(1 for _ in iter_lines(path))


@dataclass(frozen=True)
class CorpusSplit:
    """Lines ``[line_start, line_stop)`` of the text file ``path`` (``line_stop=None``: to the end).

    Iterating yields the lines as ``str`` (via :func:`iter_split_lines`) and can be repeated.
    """

    path: str
    line_start: int = 0
    line_stop: int | None = None

    def __iter__(self) -> Iterator[str]:
        return iter_split_lines(self)

    def describe(self) -> str:
        """``"ptb.train.txt"`` or ``"input.txt lines 36000-40000"`` (0-based, stop exclusive)."""
        name = os.path.basename(self.path)
        if self.line_start == 0 and self.line_stop is None:
            return name
        stop = "end" if self.line_stop is None else str(self.line_stop)
        return f"{name} lines {self.line_start}-{stop}"

    def fingerprint(self) -> str:
        """A string that changes when the file (size, modification time) or the range changes.

        Meant as the ``source`` of a token cache (see ``rnnkit.data.stream``).
        """
        st = os.stat(self.path)
        return (f"{os.path.abspath(self.path)}|{st.st_size}|{st.st_mtime_ns}|"
                f"{self.line_start}|{self.line_stop}")


def iter_split_lines(split: CorpusSplit) -> Iterator[str]:
    """Stream the lines of ``split`` (see :func:`iter_lines` for what a line is)."""
    return islice(iter_lines(split.path), split.line_start, split.line_stop)


@dataclass(frozen=True)
class CorpusFiles:
    """Where a language-model corpus lives: train and valid splits, and test if there is one.

    ``alternatives`` lists training files of other corpora found in the same folder and not
    chosen (e.g. ``ptb.char.train.txt`` next to ``ptb.train.txt``), so callers can report them.
    """

    train: CorpusSplit
    valid: CorpusSplit
    test: CorpusSplit | None = None
    alternatives: tuple[str, ...] = field(default=())


def _check_fraction(valid_fraction: float) -> None:
    if not (isinstance(valid_fraction, (int, float)) and 0 < valid_fraction < 1):
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")


def split_by_lines(path: str | os.PathLike, valid_fraction: float = 0.1
                   ) -> tuple[CorpusSplit, CorpusSplit]:
    """Cut one text file into (train, valid): the last ``valid_fraction`` of its lines is valid.

    The valid split has ``max(1, round(n * valid_fraction))`` of the file's ``n`` lines; the
    train split has the rest and must not be empty. Reads the file once to count (and check) it.
    """
    _check_fraction(valid_fraction)
    path = os.fspath(path)
    n = count_lines(path)
    n_valid = max(1, round(n * valid_fraction))
    if n - n_valid < 1:
        raise ValueError(f"{path}: only {n} line(s), too few to split into train and valid "
                         f"with valid_fraction={valid_fraction}")
    return CorpusSplit(path, 0, n - n_valid), CorpusSplit(path, n - n_valid, None)


def split_words_of(name: str) -> list[tuple[str, str]]:
    """The (split, word) pairs a file name names: a name names a split when one of its words
    (cut at ".", "-", "_") is one of the split's :data:`SPLIT_WORDS`, or is one followed by
    digits — ``ptb.train.txt``, ``en_ewt-ud-dev.conllu``, ``val.de``,
    ``test_2016_flickr.en``, ``train2016.txt`` (not ``interval.txt``, ``values.txt`` or
    ``testament.train.txt``'s first word)."""
    words = re.split(r"[._-]", name.lower())
    return [(kind, word) for kind, names in SPLIT_WORDS.items() for word in names
            if any(re.fullmatch(rf"{word}\d*", w) for w in words)]


def _split_kind(name: str) -> tuple[str, str] | None:
    """``("train", "ptb.{}.txt")`` for ``"ptb.train.txt"``; None if the name names no split."""
    found = split_words_of(name)
    if not found:
        return None
    if len({kind for kind, _ in found}) > 1:
        kinds = " and ".join(sorted({kind for kind, _ in found}))
        raise ValueError(f"{name}: file name matches more than one split ({kinds}); "
                         "rename it or pass a single file")
    kind, word = found[0]
    lower = name.lower()
    whole = re.search(rf"(?:^|(?<=[._-])){re.escape(word)}(?=\d*(?:[._-]|$))", lower)
    at = whole.start()
    return kind, lower[:at] + "{}" + lower[at + len(word):]


def _group_split_files(folder: str) -> dict[str, dict[str, list[str]]]:
    """``{template: {kind: [paths]}}`` for the split-named regular files of ``folder``."""
    groups: dict[str, dict[str, list[str]]] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        kind_template = _split_kind(name)
        if kind_template is not None:
            kind, template = kind_template
            groups.setdefault(template, {}).setdefault(kind, []).append(path)
    return groups


def _choose_group(folder: str, groups: dict[str, dict[str, list[str]]],
                  variant: str | None) -> tuple[dict[str, list[str]], tuple[str, ...]]:
    with_train = {t: g for t, g in groups.items() if "train" in g}
    if variant is not None:
        with_train = {t: g for t, g in with_train.items() if variant.lower() in t}
        if not with_train:
            raise ValueError(f"{folder}: no training file whose name contains {variant!r}")
    if not with_train:
        raise ValueError(f"{folder}: no training split (expected a file named like train.txt); "
                         "to split a single file by lines, pass the file itself")
    shortest = min(len(t) for t in with_train)
    best = [t for t in with_train if len(t) == shortest]
    if len(best) > 1:
        names = ", ".join(os.path.basename(with_train[t]["train"][0]) for t in best)
        raise ValueError(f"{folder}: several training files ({names}); pass variant=... "
                         "with a part of the name, or pass the file itself")
    chosen = with_train[best[0]]
    others = tuple(p for t, g in sorted(with_train.items()) if t != best[0] for p in g["train"])
    return chosen, others


def _single(folder: str, group: dict[str, list[str]], kind: str) -> str | None:
    paths = group.get(kind, [])
    if len(paths) > 1:
        names = ", ".join(os.path.basename(p) for p in paths)
        raise ValueError(f"{folder}: several {kind} files for one corpus ({names})")
    return paths[0] if paths else None


def find_splits(path: str | os.PathLike, valid_fraction: float = 0.1, *,
                variant: str | None = None) -> CorpusFiles:
    """Locate the train/valid/test splits of a language-model corpus.

    Args:
        path: one text file — train is its first ``1 - valid_fraction`` of lines, valid the
            rest, no test (see :func:`split_by_lines`) — or a folder of split files. In a
            folder a file is the train split if a word of its name is "train" (any case),
            valid if "valid", "val" or "dev", test if "test" (``ptb.train.txt``,
            ``train.txt``, ``wiki.valid.tokens``; see :func:`split_words_of`); hidden files
            are ignored. Files belong to one corpus when
            their names agree outside the split word (``ptb.{}.txt``). If several corpora
            have a train file, the one with the shortest name pattern is chosen
            (``ptb.train.txt`` over ``ptb.char.train.txt``) and the others are listed in
            ``CorpusFiles.alternatives``. Without a valid file, valid is the last
            ``valid_fraction`` of the train file's lines.
        valid_fraction: in (0, 1).
        variant: in a folder, only corpora whose file names contain this text
            (e.g. ``"char"`` picks ``ptb.char.*.txt``).

    Only cheap checks are made here (exists, not empty, not binary); a split is fully
    decoded, with exact error offsets, when it is read.
    """
    _check_fraction(valid_fraction)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or folder")
    if not os.path.isdir(path):
        _open_binary(path).close()
        train, valid = split_by_lines(path, valid_fraction)
        return CorpusFiles(train, valid, None)
    group, others = _choose_group(path, _group_split_files(path), variant)
    train_path = _single(path, group, "train")
    valid_path = _single(path, group, "valid")
    test_path = _single(path, group, "test")
    for p in (train_path, valid_path, test_path):
        if p is not None:
            _open_binary(p).close()
    if valid_path is None:
        train, valid = split_by_lines(train_path, valid_fraction)
    else:
        train, valid = CorpusSplit(train_path), CorpusSplit(valid_path)
    test = CorpusSplit(test_path) if test_path is not None else None
    return CorpusFiles(train, valid, test, others)

"""Readers for the supervised tasks: labelled lines, tagged sentences, sentence pairs.

Every reader goes through :func:`rnnkit.data.iter_lines` (strict UTF-8, exact byte offsets
for bad bytes) and raises ``ValueError("{path}, line {n}: …")`` — 1-based line numbers —
for input that does not fit its format, saying what was expected.

- **Classification**: ``label<TAB>text`` per line (:func:`read_labelled`). A first line
  ``label<TAB>…`` (any case) is a header and skipped. With ``vector=True`` the label field
  is a comma-separated list of numbers (a condition vector, see the conditioned LM).
- **Tagging** (:func:`read_tagged`): CoNLL-U — 10 tab-separated columns, ``#`` comments,
  a blank line after each sentence; word lines have an integer ID; multiword-token ranges
  (``3-4``) and empty nodes (``8.1``) are kept for writing back but not tagged — or simple
  columns, ``word<TAB>tag`` per line (``word`` alone when the tags are to be predicted),
  a blank line between sentences. :func:`write_tagged` writes predicted tags back in the
  input's own format.
- **Translation** (:func:`read_parallel`): two aligned text files (line i translates line i)
  or one ``source<TAB>target`` TSV.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from rnnkit.data.text import iter_lines
from rnnkit.files import write_text

TAG_COLUMNS = {"upos": 3, "xpos": 4}
CONLLU_COLUMNS = 10


def _where(path, n: int) -> str:
    return f"{os.fspath(path)}, line {n}"


# -- classification -----------------------------------------------------------------------

@dataclass(frozen=True)
class LabelledLine:
    """One example of a ``label<TAB>text`` file; ``line`` is its 1-based line number."""

    label: str | tuple[float, ...]
    text: str
    line: int


def read_labelled(path: str | os.PathLike, *, vector: bool = False,
                  require_label: bool = True) -> list[LabelledLine]:
    """The examples of a ``label<TAB>text`` file (see the module docstring).

    Args:
        vector: the label field is a comma-separated list of numbers (all of one length).
        require_label: False accepts lines of text alone (label ``""``), for prediction;
            a line with a tab still splits at the first one.

    Raises:
        ValueError naming the file and line: no tab, an empty label or text, a label that
        is not a list of numbers (``vector``), vectors of different lengths, no examples.
    """
    examples: list[LabelledLine] = []
    size = None
    for n, raw in enumerate(iter_lines(path), start=1):
        if n == 1 and raw.split("\t", 1)[0].strip().lower() == "label" and "\t" in raw:
            continue                                            # header
        if not raw.strip():
            raise ValueError(f"{_where(path, n)}: empty line; expected 'label<TAB>text'")
        if "\t" not in raw:
            if require_label:
                raise ValueError(f"{_where(path, n)}: no tab; expected 'label<TAB>text'")
            label, text = "", raw
        else:
            label, text = raw.split("\t", 1)
            label = label.strip()
            if not label and require_label:
                raise ValueError(f"{_where(path, n)}: empty label; expected 'label<TAB>text'")
        if not text.strip():
            raise ValueError(f"{_where(path, n)}: empty text after the label; expected "
                             f"'label<TAB>text'")
        if vector and label:
            label = _parse_vector(label, path, n)
            if size is not None and len(label) != size:
                raise ValueError(f"{_where(path, n)}: a vector of {len(label)} numbers, "
                                 f"expected {size} like the lines before")
            size = len(label)
        examples.append(LabelledLine(label, text, n))
    if not examples:
        raise ValueError(f"{os.fspath(path)}: no examples (only a header?)")
    return examples


def _parse_vector(field_text: str, path, n: int) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in field_text.split(","))
    except ValueError:
        raise ValueError(f"{_where(path, n)}: label {field_text!r} is not a comma-separated "
                         f"list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{_where(path, n)}: label {field_text!r} holds a non-finite number")
    return values


# -- tagging ------------------------------------------------------------------------------

@dataclass
class TaggedSentence:
    """A sentence of a tagging file.

    ``words`` and ``tags`` are the tagged tokens (``tags`` entries are ``None`` when the
    file gives none); ``lines`` keeps every input line of the sentence (comments and
    multiword ranges of CoNLL-U included) and ``word_lines[k]`` is the index in ``lines`` of
    word k, so that predictions can be written back in place. ``line`` is the 1-based line
    number of the sentence's first line.
    """

    words: list[str] = field(default_factory=list)
    tags: list[str | None] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    word_lines: list[int] = field(default_factory=list)
    line: int = 0


def tagged_format(path: str | os.PathLike) -> str:
    """"conllu" if the file is named ``*.conllu`` or its first non-comment line has 10
    tab-separated columns, else "columns"."""
    if os.fspath(path).lower().endswith(".conllu"):
        return "conllu"
    for raw in iter_lines(path):
        if raw.strip() and not raw.startswith("#"):
            return "conllu" if len(raw.split("\t")) == CONLLU_COLUMNS else "columns"
    return "columns"


def read_tagged(path: str | os.PathLike, *, column: str = "upos",
                require_tags: bool = True) -> tuple[list[TaggedSentence], str]:
    """The sentences of a CoNLL-U or ``word<TAB>tag`` file, and the format found.

    Args:
        column: CoNLL-U tag column, "upos" (4th) or "xpos" (5th).
        require_tags: False accepts untagged input (CoNLL-U ``_``; columns of words alone).

    Raises:
        ValueError naming the file and line: a CoNLL-U line without 10 columns, an ID that
        is not an integer (or range/decimal), a word ID repeated within a sentence, an
        empty word, a missing tag; no sentences.
    """
    if column not in TAG_COLUMNS:
        raise ValueError(f"column: expected one of {list(TAG_COLUMNS)}, got {column!r}")
    fmt = tagged_format(path)
    sentences: list[TaggedSentence] = []
    current = TaggedSentence()
    ids: dict[int, int] = {}                # the sentence's word IDs so far -> their line

    def close():
        nonlocal current
        ids.clear()
        if current.words:
            sentences.append(current)
        elif current.lines and fmt == "conllu":
            raise ValueError(f"{_where(path, current.line)}: a sentence without word lines")
        current = TaggedSentence()

    for n, raw in enumerate(iter_lines(path), start=1):
        if not current.lines:
            current.line = n
        if not raw.strip():
            close()
            continue
        if fmt == "conllu":
            current.lines.append(raw)
            if raw.startswith("#"):
                continue
            cols = raw.split("\t")
            if len(cols) != CONLLU_COLUMNS:
                raise ValueError(f"{_where(path, n)}: {len(cols)} tab-separated columns, "
                                 f"CoNLL-U has {CONLLU_COLUMNS}")
            word_id = cols[0]
            if "-" in word_id or "." in word_id:                # multiword range, empty node
                if not all(part.isdigit() for part in word_id.replace("-", ".").split(".")):
                    raise ValueError(f"{_where(path, n)}: ID {word_id!r} is not an integer, "
                                     f"a range like 3-4 or a decimal like 8.1")
                continue
            if not word_id.isdigit():
                raise ValueError(f"{_where(path, n)}: ID {word_id!r} is not an integer")
            if int(word_id) in ids:
                raise ValueError(f"{_where(path, n)}: ID {word_id} again in the sentence "
                                 f"(first on line {ids[int(word_id)]})")
            ids[int(word_id)] = n
            word, tag = cols[1], cols[TAG_COLUMNS[column]]
            tag = None if tag == "_" else tag                   # CoNLL-U's "no value"
        else:
            cols = raw.split("\t")
            if len(cols) > 2:
                raise ValueError(f"{_where(path, n)}: {len(cols)} tab-separated columns; "
                                 f"expected 'word<TAB>tag' (or a CoNLL-U file of 10 columns)")
            word = cols[0]
            tag = cols[1].strip() if len(cols) == 2 else None
            current.lines.append(raw)
        if not word.strip():
            raise ValueError(f"{_where(path, n)}: empty word")
        if require_tags and not tag:
            raise ValueError(f"{_where(path, n)}: no tag; expected 'word<TAB>tag'" if fmt ==
                             "columns" else f"{_where(path, n)}: empty {column} column ('_' or "
                             f"nothing); expected a tag")
        current.word_lines.append(len(current.lines) - 1)
        current.words.append(word)
        current.tags.append(tag)
    close()
    if not sentences:
        raise ValueError(f"{os.fspath(path)}: no sentences")
    return sentences, fmt


def format_tagged(sentences: list[TaggedSentence], predicted: list[list[str]], fmt: str, *,
                  column: str = "upos") -> str:
    """``sentences`` with the ``predicted`` tags, as the text of a file in their own format:
    CoNLL-U with the chosen tag column replaced, or ``word<TAB>tag`` columns."""
    out: list[str] = []
    for sentence, tags in zip(sentences, predicted, strict=True):
        lines = list(sentence.lines)
        for k, tag in zip(sentence.word_lines, tags, strict=True):
            if fmt == "conllu":
                cols = lines[k].split("\t")
                cols[TAG_COLUMNS[column]] = tag
                lines[k] = "\t".join(cols)
            else:
                lines[k] = f"{lines[k].split(chr(9))[0]}\t{tag}"
        out.extend(lines)
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


def write_tagged(path: str | os.PathLike, sentences: list[TaggedSentence],
                 predicted: list[list[str]], fmt: str, *, column: str = "upos") -> None:
    """Write :func:`format_tagged` to ``path`` (atomically)."""
    write_text(path, format_tagged(sentences, predicted, fmt, column=column))


# -- translation --------------------------------------------------------------------------

@dataclass(frozen=True)
class SentencePair:
    """One aligned pair; ``line`` is its 1-based line number in the file(s)."""

    source: str
    target: str
    line: int


def read_sentences(path: str | os.PathLike) -> list[str]:
    """The sentences of a file, one per line, stripped; an empty line is an error naming the
    file and line, as is a file without sentences."""
    sentences = []
    for n, raw in enumerate(iter_lines(path), start=1):
        if not raw.strip():
            raise ValueError(f"{_where(path, n)}: empty line; expected a sentence")
        sentences.append(raw.strip())
    if not sentences:
        raise ValueError(f"{os.fspath(path)}: no sentences")
    return sentences


def read_parallel(source: str | os.PathLike, target: str | os.PathLike | None = None, *,
                  require_target: bool = True) -> list[SentencePair]:
    """Aligned sentence pairs from two files (line i of ``target`` translates line i of
    ``source``) or, with ``target=None``, from one ``source<TAB>target`` TSV. With
    ``require_target=False`` and no target file, a file without tabs is read as source
    sentences alone (target ``""``).

    Raises:
        ValueError: files of different line counts (both counts named); an empty line (file
        and line named); a TSV line without a tab; no pairs.
    """
    pairs: list[SentencePair] = []
    if target is not None:
        src_lines, tgt_lines = list(iter_lines(source)), list(iter_lines(target))
        if len(src_lines) != len(tgt_lines):
            raise ValueError(f"{os.fspath(source)} has {len(src_lines)} lines but "
                             f"{os.fspath(target)} has {len(tgt_lines)}; expected aligned files "
                             f"with one sentence per line")
        for n, (s, t) in enumerate(zip(src_lines, tgt_lines), start=1):
            for path, text in ((source, s), (target, t)):
                if not text.strip():
                    raise ValueError(f"{_where(path, n)}: empty line; expected a sentence")
            pairs.append(SentencePair(s.strip(), t.strip(), n))
    else:
        for n, raw in enumerate(iter_lines(source), start=1):
            if not raw.strip():
                raise ValueError(f"{_where(source, n)}: empty line; expected a sentence")
            if "\t" not in raw:
                if require_target:
                    raise ValueError(f"{_where(source, n)}: no tab; expected "
                                     f"'source<TAB>target' (or the targets as a second, aligned file)")
                pairs.append(SentencePair(raw.strip(), "", n))
                continue
            s, t = raw.split("\t", 1)
            if not s.strip() or (require_target and not t.strip()):
                side = "source" if not s.strip() else "target"
                raise ValueError(f"{_where(source, n)}: empty {side} sentence")
            pairs.append(SentencePair(s.strip(), t.strip(), n))
    if not pairs:
        raise ValueError(f"{os.fspath(source)}: no sentence pairs")
    return pairs

"""What the tasks share: the device, padding and bounded inference batches, how a task finds
its split files, and the selection of a classifier or tagger. The training recipe itself is :mod:`rnnkit.tasks.recipe`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnkit.config import (BATCH_LOGITS, BATCH_TOKENS, MAX_INPUT_CHARS, MAX_INPUT_TOKENS,
                           check_fields, option)
from rnnkit.data.text import split_words_of



@dataclass(frozen=True)
class SplitSource:
    """The fields a supervised task's data config begins with: where its examples come
    from (see :func:`split_sources`)."""

    data: str = option("", "folder with train / dev (or valid) / test files, or one file "
                       "whose last --valid-fraction is held out")
    train: str = option("", "training file (with --valid, instead of --data)")
    valid: str = option("", "validation file (with --train)")
    valid_fraction: float = option(0.1, "share held out for validation from a single --data "
                                   "file")

    def check_source(self, checks: list, what: str) -> None:
        """Check the fields (``checks`` as :func:`rnnkit.config.check_fields` takes them,
        for the task's own fields), then that the examples come from somewhere."""
        check_fields(self, [("valid_fraction", lambda c: 0 < c.valid_fraction < 1,
                             "a number in (0, 1)"), *checks])
        if self.data and (self.train or self.valid):
            raise ValueError(f"data: give --data or --train/--valid, not both (--data "
                             f"{self.data!r} with --{'train' if self.train else 'valid'} "
                             f"{self.train or self.valid!r})")
        if not self.data and not (self.train and self.valid):
            raise ValueError(f"data: expected a folder or file of {what}, or both train and "
                             f"valid files")


def device_of(name: str | None) -> torch.device:
    """"cpu", "cuda", "cuda:N" or "auto" (CUDA if there is one) as a checked torch.device."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA device is available here; leave out "
                             f"--device (or give --device cpu) to run on the CPU")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), "
                             f"numbered from 0")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: expected cpu, cuda, cuda:N or auto")
    return device


def error_objective(metrics: dict) -> float:
    """What selects a classifier or tagger: the error rate, ties broken by the loss."""
    return (1 - metrics["accuracy"]) + 1e-6 * metrics["loss"]


def pad(sequences: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Id lists -> (T, B) long tensor padded with ``pad_id``, and lengths (B,)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    out = torch.full((int(lengths.max()), len(sequences)), pad_id, dtype=torch.long)
    for b, s in enumerate(sequences):
        out[:len(s), b] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


def length_batches(lengths: Sequence[int], batch_size: int,
                   max_tokens: int = BATCH_TOKENS) -> Iterator[list[int]]:
    """Indices of sequences of these lengths, shortest first, in batches of at most
    ``batch_size`` sequences and ``max_tokens`` padded tokens (sequences x the longest);
    a sequence longer than ``max_tokens`` is a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    batch: list[int] = []
    for k in order:
        if batch and (len(batch) == batch_size or (len(batch) + 1) * lengths[k] > max_tokens):
            yield batch
            batch = []
        batch.append(k)
    if batch:
        yield batch


def logits_tokens(vocab_size: int) -> int:
    """Tokens per forward pass whose output scores (tokens x ``vocab_size``) stay within
    BATCH_LOGITS (and at most BATCH_TOKENS)."""
    return max(1, min(BATCH_TOKENS, BATCH_LOGITS // vocab_size))


def encode_bounded(texts: Sequence[str], encode: Callable[[Sequence[str]], list[list[int]]],
                   where: Callable[[int], str], reader: str) -> list[list[int]]:
    """``encode(texts)`` (one id list per text) of texts that a model reads whole, refusing
    (``ValueError`` at ``where(k)``, naming ``reader``) a text longer than MAX_INPUT_CHARS
    characters before anything is tokenized, or than MAX_INPUT_TOKENS tokens after."""
    for k, text in enumerate(texts):
        if len(text) > MAX_INPUT_CHARS:
            raise ValueError(f"{where(k)}: {len(text):,} characters; {reader} reads a line "
                             f"whole, at most {MAX_INPUT_CHARS:,} characters "
                             f"({MAX_INPUT_TOKENS:,} tokens): split the line")
    ids = encode(texts)
    for k, row in enumerate(ids):
        if len(row) > MAX_INPUT_TOKENS:
            raise ValueError(f"{where(k)}: {len(row):,} tokens; {reader} reads a line whole, "
                             f"at most {MAX_INPUT_TOKENS:,} tokens: split the line")
    return ids


def split_of(name: str) -> str | None:
    """The split a file name names: "train", "valid" (valid, val, dev) or "test"; None if
    none (see :func:`rnnkit.data.text.split_words_of`)."""
    found = split_words_of(name)
    return found[0][0] if found else None


def find_split_file(folder: str, split: str, ending: str = "") -> str | None:
    """The one file of ``folder`` that names ``split`` (see :func:`split_of`) and ends with
    ``ending``; None if there is none. Hidden files are passed over; two candidates are an
    error that names both. Every task finds its split files this way."""
    names = [n for n in sorted(os.listdir(folder)) if not n.startswith(".")
             and n.endswith(ending) and split_of(n) == split
             and os.path.isfile(os.path.join(folder, n))]
    if len(names) > 1:
        kind = f"*{ending} " if ending else ""
        raise ValueError(f"{folder}: several {split} {kind}files ({', '.join(names)}); keep "
                         f"one, or name the files with train and valid")
    return os.path.join(folder, names[0]) if names else None


def split_sources(cfg) -> tuple[str, str, str | None]:
    """The files the (train, valid, test) examples of a supervised task come from: explicit
    ``train``/``valid`` files, a folder of split files (see :func:`find_split_file`; without
    a valid file, valid is held out of train; test may be None), or one file that holds
    train and valid (no test)."""
    if cfg.train:
        return cfg.train, cfg.valid, None
    if os.path.isdir(cfg.data):
        train = find_split_file(cfg.data, "train")
        if train is None:
            raise ValueError(f"{cfg.data}: no training split (expected a file named like "
                             f"train.tsv); to hold out a part of one file, pass the file")
        valid = find_split_file(cfg.data, "valid") or train
        return train, valid, find_split_file(cfg.data, "test")
    if not os.path.exists(cfg.data):
        raise ValueError(f"{cfg.data}: no such file or folder")
    return cfg.data, cfg.data, None


def labelled_splits(cfg, reader):
    """(train examples, valid examples, test file or None) of a supervised task's data
    config, each list read by ``reader(path)`` (see :func:`split_sources`). When train and
    valid come from one file, its last ``valid_fraction`` of examples is held out. The test
    file is named, not read: training never depends on it."""
    train_path, valid_path, test_path = split_sources(cfg)
    if train_path != valid_path:
        return reader(train_path), reader(valid_path), test_path
    examples = reader(train_path)
    cut = len(examples) - max(1, round(len(examples) * cfg.valid_fraction))
    if cut < 1:
        raise ValueError(f"{train_path}: too few examples ({len(examples)}) to hold out a "
                         f"validation part")
    return examples[:cut], examples[cut:], None


def config_from_dict(cls, d: dict, where: str):
    """A frozen config dataclass from a JSON dict, with a clear error naming ``where``."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown model field(s) {unknown}")
    try:
        return cls(**d)
    except TypeError as error:
        raise ValueError(f"{where}: not a valid model configuration ({error})") from None
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


PATH_FIELDS = ("data", "train", "valid")


def absolute_paths(cfg) -> dict:
    """A data config as a dict with its path fields (``data``, ``train``, ``valid``, or the
    config class's ``path_fields``) made absolute, so that a run resumes from any working
    directory. An empty field stays empty; a field that names no file but whose
    comma-separated parts do (a translator's ``SRC_FILE,TGT_FILE``) has each part made
    absolute."""
    from dataclasses import asdict

    d = asdict(cfg)
    for name in getattr(cfg, "path_fields", PATH_FIELDS):
        value = d.get(name)
        if not isinstance(value, str) or not value:
            continue
        if "," in value and not os.path.exists(value):
            d[name] = ",".join(os.path.abspath(p.strip()) if p.strip() else p
                               for p in value.split(","))
        else:
            d[name] = os.path.abspath(value)
    return d

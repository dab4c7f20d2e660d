"""Model directories and checkpoints: data, never code, and never half-written.

A model directory holds::

    config.json           what the model is: {"rnnkit": version, "task": ..., "model": {...}, ...}
    model.safetensors     the weights selected on validation (the model users load)
    tokenizer.json …      the task's vocabulary / tokenizer files (JSON)
    train_state.safetensors   everything needed to continue training exactly (see train/state.py)
    metrics.jsonl, curves.png

Every file is written with :func:`rnnkit.files.atomic_write` (re-exported here with
``write_json`` and ``read_json``): a temporary name in the same directory renamed over the
old one, so a crash or Ctrl-C leaves either the old file or the new one, never a broken one.
Tensors that share memory (tied weights) are stored once; the aliases are recorded in the
file's metadata and restored on load.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes, save_file
from torch import Tensor

import rnnkit
from rnnkit.files import atomic_write, read_json, write_json    # also checkpoint.<name>

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.safetensors"
_META_KEY = "rnnkit"


def save_tensors(path: str | Path, tensors: dict[str, Tensor], meta: dict | None = None) -> None:
    """Atomically write tensors (and a JSON-able ``meta`` dict) as one safetensors file."""
    unique: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in tensors.items():
        t = t.detach()
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        unique[name] = t.to("cpu").contiguous().clone()
    header = {"meta": meta or {}, "aliases": aliases}
    metadata = {_META_KEY: json.dumps(header)}

    def write(tmp: str) -> None:
        try:
            save_file(unique, tmp, metadata=metadata)
        except SafetensorError as error:         # its I/O errors, e.g. a full disk
            raise _os_error(error) from None

    size = sum(t.numel() * t.element_size() for t in unique.values()) + len(metadata[_META_KEY])
    atomic_write(path, write, size=size + 1024 * (len(unique) + 1))


def _os_error(error: SafetensorError) -> OSError:
    """safetensors reports an I/O error as text ("IoError(Os { code: 28, kind: StorageFull,
    … })"): the OSError it stands for, so that it is reported like any other."""
    text = str(error)
    found = re.search(r"code: (\d+)", text)
    code = int(found.group(1)) if found else (errno.ENOSPC if "StorageFull" in text
                                               or "No space left" in text else errno.EIO)
    return OSError(code, text)


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read a file written by :func:`save_tensors`: (tensors on CPU, meta)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        # Read into memory, not memory-mapped: no tensor returned keeps the file mapped, so
        # a file replaced later (the next train state) frees its disk space at once.
        data = path.read_bytes()
        tensors = load_bytes(data)
        header = json.loads(_metadata(data).get(_META_KEY, "{}"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: corrupted or truncated checkpoint ({error})") from None
    del data
    if not isinstance(header, dict) or not isinstance(header.get("aliases", {}), dict) or \
            not isinstance(header.get("meta", {}), dict):
        raise ValueError(f"{path}: not an rnnkit checkpoint (its {_META_KEY!r} metadata is "
                         f"not the expected JSON object)")
    for name, target in header.get("aliases", {}).items():
        if target not in tensors:
            raise ValueError(f"{path}: corrupted checkpoint ({name!r} is an alias of "
                             f"{target!r}, which the file does not hold)")
        tensors[name] = tensors[target]
    return tensors, header.get("meta", {})


def _metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's header (8-byte length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length].decode("utf-8"))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def save_model(directory: str | Path, model: torch.nn.Module, config: dict) -> None:
    """Write ``config.json`` (with the rnnkit version) and the model's weights."""
    directory = Path(directory)
    save_tensors(directory / WEIGHTS, model.state_dict(), {"task": config.get("task")})
    write_json(directory / CONFIG, {"rnnkit": rnnkit.__version__, **config})


def read_config(directory: str | Path, task: str | None = None) -> dict:
    """The ``config.json`` of a model directory, checked to be of ``task`` if given."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such model directory")
    if not (directory / CONFIG).is_file():
        if (directory / TRAIN_STATE).is_file():      # a run stopped before its first model
            raise ValueError(f"{directory}: no model saved yet (the run stopped before its "
                             f"first validation; its train state can go on: rnnkit train … "
                             f"--out {directory} --resume)")
        raise ValueError(f"{directory}: not an rnnkit model directory (no {CONFIG})")
    config = read_json(directory / CONFIG)
    found = config.get("task")
    if task is not None and found != task:
        raise ValueError(f"{directory}: holds a {found!r} model, expected a {task!r} model")
    return config


def load_weights(directory: str | Path, model: torch.nn.Module, name: str = WEIGHTS) -> None:
    """Load ``name`` from a model directory into ``model`` (CPU tensors; any device after)."""
    path = Path(directory) / name
    tensors, _ = load_tensors(path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0:2]
        raise ValueError(f"{path}: weights do not fit the model in {CONFIG}: "
                         f"{' '.join(first)}") from None

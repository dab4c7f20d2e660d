"""Model directories and checkpoints: data, never code, and never half-written.

A model directory holds::

    config.json           what the model is: {"rnnkit": version, "task": ..., "model": {...}, ...}
    model.safetensors     the weights selected on validation (the model users load)
    tokenizer.json …      the task's vocabulary / tokenizer files (JSON)
    train_state.safetensors   everything needed to continue training exactly (see train.py)
    metrics.jsonl, curves.png

Every file is written with :func:`rnnkit.files.atomic_write` (re-exported here with
``write_json`` and ``read_json``): a temporary name in the same directory renamed over the
old one, so a crash or Ctrl-C leaves either the old file or the new one, never a broken one.
Tensors that share memory (tied weights) are stored once; the aliases are recorded in the
file's metadata and restored on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
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
    atomic_write(path, lambda tmp: save_file(unique, tmp, metadata={_META_KEY: json.dumps(header)}))


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read a file written by :func:`save_tensors`: (tensors on CPU, meta)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        tensors = load_file(str(path), device="cpu")
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get(_META_KEY, "{}"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: corrupted or truncated checkpoint ({error})") from None
    for name, target in header.get("aliases", {}).items():
        tensors[name] = tensors[target]
    return tensors, header.get("meta", {})


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

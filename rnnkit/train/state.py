"""The train state: everything needed to continue a run exactly, as one safetensors file
(``train_state.safetensors``; no pickles).

Tensors, by name::

    model.<name>            the model's state_dict
    optim.<index>.<name>    the optimiser's tensor state of parameter <index> (Adam's moments, …)
    carry.<name>            the state the task carries between batches (truncated BPTT)
    rng.torch               torch's CPU generator; rng.cuda.<k>: device k's, when there is CUDA
    rank.<r>.carry.<name>   in a run of several processes, process r's own (r >= 1; process
    rank.<r>.rng.…          0's are the names above)

Meta (JSON): the loop's counters as the loop names them (``step``, ``epoch``, ``elapsed``,
``units``, ``best``, ``plateau_best``, ``log_window``; an infinite one, such as no best yet,
as null), ``optimizer`` (``param_groups`` and the non-tensor ``scalars`` of each
parameter), ``batches`` (the data position: the batch source's state_dict) and
``python_random`` (the state of Python's ``random``); in a run of several processes,
``processes`` (their number) and ``rank_python_random`` (the random state of processes 1…).
Existing run directories hold these names: renaming one breaks their resume.

A distributed run resumes with the same number of processes only: each process's data
position, carried state and random streams are its own (the error says so).
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import torch
from torch import Tensor

from rnnkit import checkpoint
from rnnkit.train.distributed import SINGLE, World

_REQUIRED = ("optimizer", "batches", "python_random")      # meta written here …
_OWN = (*_REQUIRED, "processes", "rank_python_random")      # … (the rest: the counters)
_COUNTERS = ("step", "epoch", "elapsed", "units", "best", "plateau_best")   # the loop's


def exact_kernels(device: torch.device) -> None:
    """On CUDA, the kernel choices without which a resumed run cannot continue exactly:
    cuDNN's deterministic algorithms (no timing-based choice), and cuBLAS's fixed workspace
    (read when its first handle is made: call this before the first product). Nothing to
    do on the CPU, whose kernels are deterministic."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def save_train_state(path: Path, task, optimizer: torch.optim.Optimizer,
                     counters: dict, world: World = SINGLE) -> None:
    """Write the train state of ``task`` and ``optimizer`` with the loop's ``counters``; in
    a distributed run, every process calls it, and process 0 writes each one's own part."""
    parts = world.gather_to_writer(_own_part(task))
    if not world.writer:
        return
    optim_tensors, optim_meta = _optimizer_to_data(optimizer)
    tensors = {**_prefixed("model.", task.model.state_dict()), **optim_tensors,
               **parts[0]["tensors"]}
    for rank, part in enumerate(parts[1:], 1):
        tensors.update(_prefixed(f"rank.{rank}.", part["tensors"]))
    meta = {**{name: _finite_or_none(value) for name, value in counters.items()},
            "optimizer": optim_meta, "batches": task.batches.state_dict(),
            "python_random": parts[0]["python_random"]}
    if world.size > 1:
        meta.update(processes=world.size,
                    rank_python_random=[part["python_random"] for part in parts[1:]])
    checkpoint.save_tensors(path, tensors, meta)


def _own_part(task) -> dict:
    """What is this process's own in the train state: the carried state and the random
    generators (tensors on the CPU)."""
    carry_tensors = getattr(task, "carry_tensors", dict)
    tensors = {**_prefixed("carry.", {k: v.cpu() for k, v in carry_tensors().items()}),
               "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for k, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{k}"] = state
    return {"tensors": tensors, "python_random": _jsonable(random.getstate())}


def load_train_state(path: Path, task, optimizer: torch.optim.Optimizer,
                     world: World = SINGLE) -> dict:
    """Restore ``task`` (model, carry, data position), ``optimizer`` and the random-number
    generators from ``path`` (in a distributed run, this process's own); return the loop's
    counters as they were saved."""
    if not path.is_file():
        raise ValueError(f"{path.parent}: nothing to resume (no {path.name})")
    tensors, meta = checkpoint.load_tensors(path)
    if meta.get("processes", 1) != world.size:
        raise ValueError(f"{path}: saved by a run of {meta.get('processes', 1)} process(es), "
                         f"resumed by {world.size}; resume it with as many as trained it")
    own = "" if world.rank == 0 else f"rank.{world.rank}."
    missing = [name for name in (*_REQUIRED, *_COUNTERS) if name not in meta]
    if missing or "rng.torch" not in tensors:
        what = ", ".join(missing + ([] if "rng.torch" in tensors else ["tensor rng.torch"]))
        raise ValueError(f"{path}: not a complete train state (its metadata lacks {what}); "
                         f"it cannot be resumed — start a new run, or resume from an intact "
                         f"{path.name}")
    # Fresh copies: a tensor read from the file lies at its offset in the file, one computed
    # in an unbroken run where the allocator puts it (64-byte aligned); matrix products
    # (MKL) round differently at other alignments, so a carried state or optimiser moment
    # left at an odd address breaks bit-exact resume now and then.
    tensors = {name: value.clone() for name, value in tensors.items()}
    try:
        task.model.load_state_dict(_unprefixed("model.", tensors))
    except RuntimeError as error:
        raise ValueError(f"{path}: does not fit the model being trained "
                         f"({str(error).splitlines()[0]})") from None
    try:
        _optimizer_from_data(optimizer, tensors, meta["optimizer"])
        if hasattr(task, "load_carry"):
            task.load_carry(_unprefixed(own + "carry.", tensors))
        torch.set_rng_state(tensors[own + "rng.torch"])
        cuda_states = [tensors[f"{own}rng.cuda.{k}"] for k in range(torch.cuda.device_count())
                       if f"{own}rng.cuda.{k}" in tensors]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(_tuplify(meta["python_random"] if world.rank == 0
                                 else meta["rank_python_random"][world.rank - 1]))
        task.batches.load_state_dict(meta["batches"])
    except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as error:
        raise ValueError(f"{path}: damaged train state ({type(error).__name__}: {error}); "
                         f"it cannot be resumed") from None
    return {name: math.inf if value is None else value
            for name, value in meta.items() if name not in _OWN}


def _optimizer_to_data(optimizer) -> tuple[dict[str, Tensor], dict]:
    """Optimiser state as (tensors, JSON) — no pickles."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_data(optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _prefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + name: value for name, value in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name[len(prefix):]: value for name, value in tensors.items()
            if name.startswith(prefix)}


def _finite_or_none(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _jsonable(obj):
    """Tuples (as in ``random.getstate()``) as lists, for JSON."""
    if isinstance(obj, tuple):
        return [_jsonable(x) for x in obj]
    return obj


def _tuplify(obj):
    """The inverse of :func:`_jsonable`."""
    if isinstance(obj, list):
        return tuple(_tuplify(x) for x in obj)
    return obj

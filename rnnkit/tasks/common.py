"""What every task's ``train_*`` function shares: the device, the run file that lets
``--resume`` rebuild a run, the refusal to train over a model, padding, and the end of a
run (reload the best weights and measure them).

A run directory holds ``run.json`` = {"task", "data", "model", "train"}: the settings a run
was started with, so that ``resume`` needs nothing else.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from rnnkit import checkpoint
from rnnkit.data import find_splits
from rnnkit.train import Trainer, TrainConfig

RUN = "run.json"


def device_of(name: str | None) -> torch.device:
    """"cpu", "cuda", "cuda:N" or "auto" (CUDA if there is one) as a checked torch.device."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected cpu, cuda, cuda:N or auto, got {name!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device: {name!r} asked for, but no CUDA device is available")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device: {name!r} asked for, but there are {count} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"device: expected cpu, cuda, cuda:N or auto, got {name!r}")
    return device


def check_new_run(out: Path, extra: tuple[str, ...] = ()) -> None:
    """Refuse to start a run in a directory that holds a model or a run already."""
    taken = [n for n in (checkpoint.TRAIN_STATE, checkpoint.WEIGHTS, checkpoint.CONFIG, RUN,
                         *extra) if (out / n).exists()]
    if taken:
        raise ValueError(f"{out}: holds a model or run already ({', '.join(taken)}); use "
                         f"--resume to continue it, or choose another --out")


def write_run(out: Path, task: str, data_cfg, model: dict, train_cfg: TrainConfig) -> None:
    """Record the settings of a new run in ``out/run.json``."""
    checkpoint.write_json(out / RUN, {"task": task, "data": asdict(data_cfg), "model": model,
                                      "train": asdict(train_cfg)})


def read_run(out: Path, task: str, data_cls, train_overrides: dict | None = None):
    """The settings of the run in ``out``: (data config, model dict, train config), the
    train config updated with ``train_overrides`` (a new budget, say)."""
    run = checkpoint.read_json(out / RUN)
    if run.get("task") != task:
        raise ValueError(f"{out / RUN}: a {run.get('task')!r} run, not a {task!r} run")
    try:
        data_cfg = data_cls(**run["data"])
        model = dict(run["model"])
        train_cfg = TrainConfig(**{**run["train"], **(train_overrides or {})})
    except (KeyError, TypeError) as error:
        raise ValueError(f"{out / RUN}: not a run file rnnkit can resume ({error})") from None
    return data_cfg, model, train_cfg


def save_run_files(out: Path, task: str, data_cfg, model: dict, train_cfg: TrainConfig,
                   write) -> None:
    """Start a run's directory once every input has been read and checked: ``write(out)``
    saves the task's vocabularies, then ``run.json`` records the settings. Nothing is
    written before, so a run refused for bad input leaves no half-started directory."""
    out.mkdir(parents=True, exist_ok=True)
    write(out)
    write_run(out, task, data_cfg, model, train_cfg)


def error_objective(metrics: dict) -> float:
    """What selects a classifier or tagger: the error rate, ties broken by the loss."""
    return (1 - metrics["accuracy"]) + 1e-6 * metrics["loss"]


def fit(task, train_cfg: TrainConfig, out: Path, config: dict, *, resume: bool, log,
        describe) -> dict:
    """Run the training loop, then reload the best weights and add their validation
    metrics to the summary as "valid" (unless the run was interrupted)."""
    trainer = Trainer(task, train_cfg, out, config, log=log)
    summary = trainer.fit(resume=resume)
    if summary["reason"] != "interrupted" and (out / checkpoint.WEIGHTS).is_file():
        checkpoint.load_weights(out, task.model)
        summary["valid"] = task.evaluate("valid")
        log(f"best model: valid {describe(summary['valid'])}")
    return summary


def pad(sequences: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Id lists -> (T, B) long tensor padded with ``pad_id``, and lengths (B,)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    out = torch.full((int(lengths.max()), len(sequences)), pad_id, dtype=torch.long)
    for b, s in enumerate(sequences):
        out[:len(s), b] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


def split_sources(cfg) -> tuple[str, str, str | None]:
    """The files the (train, valid, test) examples of a supervised task come from: explicit
    ``train``/``valid`` files, a folder of split files (see :func:`rnnkit.data.find_splits`;
    test may be None), or one file that holds train and valid (no test)."""
    if cfg.train:
        return cfg.train, cfg.valid, None
    if os.path.isdir(cfg.data):
        files = find_splits(cfg.data, cfg.valid_fraction)
        test = files.test.path if files.test is not None else None
        return files.train.path, files.valid.path, test
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

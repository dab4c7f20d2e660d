"""One training loop for every rnnkit task: optimiser, clipping, schedule, checkpoints,
exact resume, metrics, progress.

A task (language model, classifier, …) supplies the model and four things (see
:class:`Task`): a resumable source of training batches, the loss of a batch, an evaluation,
and any state it carries between batches (the hidden state of truncated BPTT). The loop
never sees argparse or the file formats of a task.

Exact resume: ``train_state.safetensors`` holds the model, the optimiser, the learning-rate
schedule, the random-number generator, the position in the data and the carried state, all
at a step boundary; continuing from it gives the same losses, bit for bit, as a run that
never stopped. It is written at the end of each epoch, every ``save_every`` steps, when a
time or step limit ends the run, and when Ctrl-C asks it to stop (a second Ctrl-C stops at
once; the files on disk stay whole either way).
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from rnnkit import checkpoint
from rnnkit.config import check_fields
from rnnkit.plotting import new_figure, save_figure

OPTIMIZERS = ("sgd", "adam", "adamw")
METRICS = "metrics.jsonl"
CURVES = "curves.png"


class TrainingStopped(ValueError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train; every field is a command-line option and a config-file key."""

    epochs: int = 10
    max_steps: int = 0                  # 0: no limit
    max_minutes: float = 0.0            # 0: no limit
    optimizer: str = "sgd"              # "sgd" | "adam" | "adamw"
    lr: float = 20.0
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip: float = 0.25                  # max gradient norm; 0: off
    lr_decay: float = 4.0               # divide lr by this when validation stops improving
    seed: int = 1
    eval_every: int = 0                 # steps between validations; 0: once per epoch
    save_every: int = 0                 # steps between resumable checkpoints; 0: per epoch
    log_every: int = 50                 # steps between metric lines
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self):
        checks = [("epochs", lambda c: c.epochs >= 1, "an int >= 1"),
                  ("max_steps", lambda c: c.max_steps >= 0, "an int >= 0"),
                  ("max_minutes", lambda c: c.max_minutes >= 0, "a number >= 0"),
                  ("optimizer", lambda c: c.optimizer in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
                  ("lr", lambda c: c.lr > 0, "a number > 0"),
                  ("momentum", lambda c: 0 <= c.momentum < 1, "a number in [0, 1)"),
                  ("weight_decay", lambda c: c.weight_decay >= 0, "a number >= 0"),
                  ("clip", lambda c: c.clip >= 0, "a number >= 0"),
                  ("lr_decay", lambda c: c.lr_decay >= 1, "a number >= 1"),
                  ("eval_every", lambda c: c.eval_every >= 0, "an int >= 0"),
                  ("save_every", lambda c: c.save_every >= 0, "an int >= 0"),
                  ("log_every", lambda c: c.log_every >= 1, "an int >= 1")]
        check_fields(self, checks)


class BatchSource(Protocol):
    def next_batch(self): ...            # a batch, or None at the end of the epoch
    def reset_epoch(self) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Task(Protocol):
    """What the loop needs from a task."""

    name: str                            # "lm", "classifier", …
    unit: str                            # what ``units`` counts, e.g. "tok"
    model: nn.Module
    batches: BatchSource

    def train_loss(self, batch) -> tuple[Tensor, int]:
        """Mean loss of a batch (scalar, with grad) and the number of units it covers."""

    def evaluate(self, split: str) -> dict:
        """Metrics of a split; draws no random numbers. Must contain "loss"; the model is
        selected on "objective" (lower is better, e.g. the error rate) if present, else on
        "loss"."""

    def describe(self, metrics: dict) -> str:
        """A short human summary of ``evaluate``'s metrics, e.g. "ppl 112.3"."""

    # Optional, for a task that carries state from batch to batch (truncated BPTT); a task
    # without them carries nothing.
    def reset_carry(self) -> None: ...
    def carry_tensors(self) -> dict[str, Tensor]: ...
    def load_carry(self, tensors: dict[str, Tensor]) -> None: ...


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


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


class Trainer:
    """Train ``task`` into the model directory ``out`` (see the module docstring)."""

    def __init__(self, task: Task, config: TrainConfig, out: str | Path, model_config: dict,
                 log=print):
        self.task, self.config, self.out = task, config, Path(out)
        self.model_config = model_config      # written to config.json with the best weights
        self.log = log
        self.optimizer = build_optimizer(task.model, config)
        self.step = 0
        self.epoch = 0
        self.elapsed = 0.0                    # training seconds before this process
        self.units = 0
        self.best = math.inf                  # best validation objective: selects the model
        self.plateau_best = math.inf          # best at epoch ends: drives the lr schedule
        self.history: list[dict] = []
        self._stop_requested = False
        self._writer = None
        self._window = (0.0, 0, 0.0)          # (loss sum, units, seconds) since the last
                                              # metric line

    # -- state -------------------------------------------------------------------------------

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save_train_state(self) -> None:
        model_tensors = {f"model.{k}": v for k, v in self.task.model.state_dict().items()}
        optim_tensors, optim_meta = _optimizer_to_data(self.optimizer)
        carry_tensors = getattr(self.task, "carry_tensors", dict)
        carry = {f"carry.{k}": v for k, v in carry_tensors().items()}
        tensors = {**model_tensors, **optim_tensors, **carry, "rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for k, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{k}"] = state
        meta = {"step": self.step, "epoch": self.epoch, "elapsed": self._elapsed(),
                "units": self.units, "best": _finite_or_none(self.best),
                "plateau_best": _finite_or_none(self.plateau_best),
                "optimizer": optim_meta, "batches": self.task.batches.state_dict(),
                "log_window": list(self._window),
                "python_random": _jsonable(random.getstate())}
        checkpoint.save_tensors(self.out / checkpoint.TRAIN_STATE, tensors, meta)

    def load_train_state(self) -> None:
        path = self.out / checkpoint.TRAIN_STATE
        if not path.is_file():
            raise ValueError(f"{self.out}: nothing to resume (no {checkpoint.TRAIN_STATE})")
        tensors, meta = checkpoint.load_tensors(path)
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.task.model.load_state_dict(model_state)
        except RuntimeError as error:
            raise ValueError(f"{path}: does not fit the model being trained "
                             f"({str(error).splitlines()[0]})") from None
        _optimizer_from_data(self.optimizer, tensors, meta["optimizer"])
        carry = {k[6:]: v for k, v in tensors.items() if k.startswith("carry.")}
        if hasattr(self.task, "load_carry"):
            self.task.load_carry(carry)
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[f"rng.cuda.{k}"] for k in range(torch.cuda.device_count())
                       if f"rng.cuda.{k}" in tensors]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(_tuplify(meta["python_random"]))
        self.task.batches.load_state_dict(meta["batches"])
        self.step, self.epoch, self.units = meta["step"], meta["epoch"], meta["units"]
        self._window = tuple(meta.get("log_window", (0.0, 0, 0.0)))
        self.elapsed = meta["elapsed"]
        self.best = math.inf if meta["best"] is None else meta["best"]
        self.plateau_best = math.inf if meta["plateau_best"] is None else meta["plateau_best"]
        self._restore_metrics()

    # -- metrics -----------------------------------------------------------------------------

    def _record(self, entry: dict) -> None:
        entry = {"step": self.step, "epoch": self.epoch, **entry}
        self.history.append(entry)
        with open(self.out / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if self._writer is not None:
            for key, value in entry.items():
                if key not in ("step", "epoch", "split") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{entry['split']}/{key}", value, self.step)

    def _restore_metrics(self) -> None:
        """Keep the metric lines up to the checkpoint's step (a crash may have left more)."""
        path = self.out / METRICS
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        self.history = []
        for line in lines:                      # a crash may have cut the last line short
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("step", math.inf) <= self.step:
                self.history.append(entry)
        checkpoint.atomic_write(path, lambda tmp: Path(tmp).write_text(
            "".join(json.dumps(e) + "\n" for e in self.history), encoding="utf-8"))

    def plot(self) -> None:
        """Training and validation loss against steps, as ``curves.png``."""
        train = [(e["step"], e["loss"]) for e in self.history if e["split"] == "train"]
        valid = [(e["step"], e["loss"]) for e in self.history if e["split"] == "valid"]
        fig, ax = new_figure()
        if train:
            ax.plot(*zip(*train), label="training", linewidth=1)
        if valid:
            ax.plot(*zip(*valid), "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel(f"loss (nats per {self.task.unit})")
        ax.set_title(f"{self.task.name}: {self.out.name}")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, self.out / CURVES)

    # -- the loop ----------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self.elapsed + (time.perf_counter() - self._started)

    def _validate(self, end_of_epoch: bool) -> dict:
        metrics = self.task.evaluate("valid")
        self._record({"split": "valid", **metrics, "lr": self._lr()})
        objective = metrics.get("objective", metrics["loss"])
        improved = objective < self.best
        if improved:
            self.best = objective
            checkpoint.save_model(self.out, self.task.model, self.model_config)
        if end_of_epoch:        # the schedule looks at epoch ends only, so that a run cut
            if objective < self.plateau_best:           # short and resumed decays alike
                self.plateau_best = objective
            elif self.config.lr_decay > 1:
                for group in self.optimizer.param_groups:
                    group["lr"] /= self.config.lr_decay
        self.log(f"epoch {self.epoch + 1} step {self.step}: valid {self.task.describe(metrics)}"
                 f"{' (best)' if improved else ''}, lr {self._lr():.4g}, "
                 f"{self._elapsed() / 60:.1f} min")
        return metrics

    def _on_sigint(self, signum, frame):
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        self.log("interrupt: finishing this step and saving a resumable checkpoint "
                 "(Ctrl-C again to stop at once)")

    def fit(self, resume: bool = False) -> dict:
        """Train until the epochs, ``max_steps`` or ``max_minutes`` run out; returns a summary."""
        from tqdm import tqdm

        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        self._started = time.perf_counter()
        if resume:
            self.load_train_state()
            self.log(f"resumed {self.out} at epoch {self.epoch + 1}, step {self.step}")
        else:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            (self.out / METRICS).unlink(missing_ok=True)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard: the 'tensorboard' package is not installed "
                                 "(pip install tensorboard)") from None
            self._writer = SummaryWriter(str(self.out / "tensorboard"))
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        bar = tqdm(desc=f"epoch {self.epoch + 1}", unit=self.task.unit, unit_scale=True,
                   disable=None if cfg.progress else True, leave=False, dynamic_ncols=True)
        window_loss, window_units, seconds_before = self._window
        window_start = time.perf_counter() - seconds_before
        reason = "epochs"
        try:
            while self.epoch < cfg.epochs:
                batch = self.task.batches.next_batch()
                if batch is None:                              # end of epoch
                    self._validate(end_of_epoch=True)
                    self.epoch += 1
                    self.task.batches.reset_epoch()
                    if hasattr(self.task, "reset_carry"):
                        self.task.reset_carry()
                    self.save_train_state()
                    self.plot()
                    bar.set_description(f"epoch {self.epoch + 1}")
                    continue
                self.task.model.train()
                loss, units = self.task.train_loss(batch)
                if not torch.isfinite(loss):
                    raise TrainingStopped(
                        f"step {self.step + 1}: the training loss is {loss.item()}; stopped. "
                        f"The last good checkpoint in {self.out} is kept; try a lower --lr "
                        f"or --clip")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                value = loss.item()
                del loss                                  # free this step's graph now
                norm = nn.utils.clip_grad_norm_(self.task.model.parameters(),
                                                cfg.clip or math.inf)
                if not torch.isfinite(norm):
                    raise TrainingStopped(
                        f"step {self.step + 1}: the gradient norm is {norm.item()}; stopped "
                        f"before updating. The last good checkpoint in {self.out} is kept; "
                        f"try a lower --lr or --clip")
                self.optimizer.step()
                self.step += 1
                self.units += units
                window_loss += value * units
                window_units += units
                self._window = (window_loss, window_units,
                                time.perf_counter() - window_start)
                bar.update(units)
                if self.step % cfg.log_every == 0:
                    seconds = time.perf_counter() - window_start
                    mean = window_loss / window_units
                    rate = window_units / seconds
                    self._record({"split": "train", "loss": mean, "lr": self._lr(),
                                  f"{self.task.unit}_per_s": rate})
                    bar.set_postfix(loss=f"{mean:.3f}", lr=f"{self._lr():.3g}")
                    window_loss, window_units, window_start = 0.0, 0, time.perf_counter()
                    self._window = (0.0, 0, 0.0)
                stop = None
                if cfg.max_steps and self.step >= cfg.max_steps:
                    stop = "max_steps"
                elif cfg.max_minutes and self._elapsed() >= cfg.max_minutes * 60:
                    stop = "max_minutes"
                elif self._stop_requested:
                    stop = "interrupted"
                # a run that stops validates (unless interrupted) and saves, once each
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or \
                        stop in ("max_steps", "max_minutes"):
                    self._validate(end_of_epoch=False)
                if (cfg.save_every and self.step % cfg.save_every == 0) or stop:
                    self.save_train_state()
                if stop:
                    reason = stop
                    self.plot()
                    break
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous)
            if self._writer is not None:
                self._writer.close()
        if reason == "interrupted":
            self.log(f"saved a resumable checkpoint at step {self.step}; continue with --resume")
        return {"reason": reason, "step": self.step, "epoch": self.epoch,
                "best_valid_objective": self.best, "minutes": self._elapsed() / 60,
                "units": self.units}


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None


def _jsonable(obj):
    if isinstance(obj, tuple):
        return [_jsonable(x) for x in obj]
    return obj


def _tuplify(obj):
    if isinstance(obj, list):
        return tuple(_tuplify(x) for x in obj)
    return obj

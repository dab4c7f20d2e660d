"""The training loop: one optimiser step per batch, validation, checkpoints, and the rules
that stop a run.

A run stops when its epochs are done, after ``max_steps`` steps, after ``max_minutes`` of
training (counted across resumes), or when Ctrl-C asks it to: the step in flight finishes,
the train state is saved and the summary's reason is "interrupted" (a second Ctrl-C stops
at once). A step limit or time limit validates once more before saving. A loss or gradient
norm that is not finite raises :class:`TrainingStopped` before the weights change, and the
files on disk stay as the last save left them; so does a validation loss that is not finite
or whose perplexity overflows (inf), before those weights are saved. A start removes the
temporary files a killed write left in the run directory.
"""

from __future__ import annotations

import math
import random
import signal
import time
from pathlib import Path

import torch
from torch import nn

from rnnkit import checkpoint
from rnnkit.train.config import TrainConfig, build_optimizer
from rnnkit.train.metrics import LossWindow, MetricsLog
from rnnkit.train.schedule import PlateauSchedule
from rnnkit.train.state import load_train_state, save_train_state
from rnnkit.train.task import Task


class TrainingStopped(ValueError):
    """Training cannot go on (the loss became NaN, the validation loss exploded past what a
    float's perplexity holds); the files on disk stay as the last save left them, and the
    message says whether there is a saved model at all."""


class Trainer:
    """Train ``task`` into the model directory ``out``.

    ``model_config`` is written to config.json beside the best weights; ``log`` takes one
    line of text per validation and notice; ``clock`` gives seconds (a test may pass a fake
    one).
    """

    def __init__(self, task: Task, config: TrainConfig, out: str | Path, model_config: dict,
                 log=print, clock=time.perf_counter):
        self.task, self.config, self.out = task, config, Path(out)
        self.model_config = model_config
        self.log, self.clock = log, clock
        self.optimizer = build_optimizer(task.model, config)
        self.schedule = PlateauSchedule(self.optimizer, config.lr_decay)
        self.metrics = MetricsLog(self.out, task.unit, f"{task.name}: {self.out.name}")
        self.window: LossWindow | None = None       # made when fit begins
        self.step = self.epoch = self.units = 0
        self.elapsed = 0.0                    # training seconds before this process
        self._started = 0.0                   # the clock when this process's part began
        self.best = math.inf                  # best validation objective: selects the model
        self._stop_requested = False

    def fit(self, resume: bool = False) -> dict:
        """Train until a stop rule ends the run (see the module docstring); return a summary:
        the reason ("epochs", "max_steps", "max_minutes" or "interrupted"), the step, the
        epoch, the best validation objective, the minutes of training and the units seen."""
        self._begin(resume)
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        bar = self._progress_bar()
        reason = "epochs"
        try:
            while self.epoch < self.config.epochs:
                batch = self.task.batches.next_batch()
                if batch is None:
                    self._end_epoch()
                    bar.set_description(f"epoch {self.epoch + 1}")
                    continue
                self._count(*self._train_step(batch), bar)
                stop = self._stop_reason()
                self._validate_and_save(stop)
                if stop:
                    reason = stop
                    self.metrics.plot()
                    break
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous)
            self.metrics.close()
        if reason == "interrupted":
            self.log(f"saved a resumable checkpoint at step {self.step}; continue with --resume")
        return {"reason": reason, "step": self.step, "epoch": self.epoch,
                "best_valid_objective": self.best, "minutes": self._elapsed() / 60,
                "units": self.units}

    # -- one step ----------------------------------------------------------------------------

    def _train_step(self, batch) -> tuple[float, int]:
        """One optimiser step on ``batch``: (its mean loss, the units it covers). Raises
        TrainingStopped before the update if the loss or the gradient norm is not finite."""
        self.task.model.train()
        loss, units = self.task.train_loss(batch)
        if not torch.isfinite(loss):
            raise TrainingStopped(
                f"step {self.step + 1}: the training loss is {loss.item()}; stopped. "
                f"{self._kept()}; try a lower --lr or --clip")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        del loss                                  # free this step's graph now
        norm = nn.utils.clip_grad_norm_(self.task.model.parameters(), self.config.clip or math.inf)
        if not torch.isfinite(norm):
            raise TrainingStopped(
                f"step {self.step + 1}: the gradient norm is {norm.item()}; stopped before "
                f"updating. {self._kept()}; try a lower --lr or --clip")
        self.optimizer.step()
        return value, units

    def _kept(self) -> str:
        """What a stopped run leaves: its last good checkpoint, or plainly nothing yet."""
        saved = (self.out / checkpoint.TRAIN_STATE, self.out / checkpoint.WEIGHTS)
        if any(path.is_file() for path in saved):
            return f"The last good checkpoint in {self.out} is kept"
        return (f"No model was saved yet in {self.out} (the run stopped before its first "
                f"checkpoint), so there is nothing to resume or use; start it again without "
                f"--resume (same --out) to restart it in place")

    def _count(self, loss: float, units: int, bar) -> None:
        """Count a step done; every ``log_every`` steps write a training line."""
        self.step += 1
        self.units += units
        self.window.add(loss, units)
        bar.update(units)
        if self.step % self.config.log_every == 0:
            mean, rate = self.window.take()
            self._record({"split": "train", "loss": mean, "lr": self.schedule.lr,
                          f"{self.task.unit}_per_s": rate})
            bar.set_postfix(loss=f"{mean:.3f}", lr=f"{self.schedule.lr:.3g}")

    def _stop_reason(self) -> str | None:
        """Why the run ends after this step, if it does."""
        if self.config.max_steps and self.step >= self.config.max_steps:
            return "max_steps"
        if self.config.max_minutes and self._elapsed() >= self.config.max_minutes * 60:
            return "max_minutes"
        return "interrupted" if self._stop_requested else None

    def _validate_and_save(self, stop: str | None) -> None:
        """Validate and save when due; a run that stops validates (unless interrupted) and
        saves, once each."""
        cfg = self.config
        if (cfg.eval_every and self.step % cfg.eval_every == 0) or \
                stop in ("max_steps", "max_minutes"):
            self._validate(end_of_epoch=False)
        if (cfg.save_every and self.step % cfg.save_every == 0) or stop:
            self._save()

    def _on_sigint(self, signum, frame):
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        self.log("interrupt: finishing this step and saving a resumable checkpoint "
                 "(Ctrl-C again to stop at once)")

    # -- epochs and validation ---------------------------------------------------------------

    def _end_epoch(self) -> None:
        """Validate (for the schedule too), rewind the data and the carried state, save."""
        self._validate(end_of_epoch=True)
        self.epoch += 1
        self.task.batches.reset_epoch()
        if hasattr(self.task, "reset_carry"):
            self.task.reset_carry()
        self._save()
        self.metrics.plot()

    def _validate(self, end_of_epoch: bool) -> None:
        """Evaluate on "valid", record it, and keep the weights if their objective is the
        best yet; at an epoch end the schedule sees the objective too."""
        metrics = self.task.evaluate("valid")
        self._record({"split": "valid", **metrics, "lr": self.schedule.lr})
        ppl = metrics.get("ppl", 0.0)
        if not math.isfinite(metrics["loss"]) or (isinstance(ppl, float) and math.isinf(ppl)):
            raise TrainingStopped(
                f"step {self.step}: the validation loss is {metrics['loss']:.4g} "
                f"(perplexity {ppl:.4g}): the model has exploded; stopped before saving it. "
                f"{self._kept()}; try a lower --lr or --clip")
        objective = metrics.get("objective", metrics["loss"])
        improved = objective < self.best
        if improved:
            self.best = objective
            checkpoint.save_model(self.out, self.task.model, self.model_config)
        if end_of_epoch:        # epoch ends only, so that a run cut short and resumed decays
            self.schedule.update(objective)                 # as one that never stopped
        self.log(f"epoch {self.epoch + 1} step {self.step}: valid {self.task.describe(metrics)}"
                 f"{' (best)' if improved else ''}, lr {self.schedule.lr:.4g}, "
                 f"{self._elapsed() / 60:.1f} min")

    def _record(self, entry: dict) -> None:
        self.metrics.record({"step": self.step, "epoch": self.epoch, **entry})

    # -- start, train state, time --------------------------------------------------------------

    def _begin(self, resume: bool) -> None:
        """Continue from the train state in ``out``, or start afresh from the seed."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._started = self.clock()
        if resume:
            self._restore(load_train_state(self.out / checkpoint.TRAIN_STATE, self.task,
                                           self.optimizer))
            self.metrics.keep_until(self.step)
            self.log(f"resumed {self.out} at epoch {self.epoch + 1}, step {self.step}")
        else:
            torch.manual_seed(self.config.seed)
            random.seed(self.config.seed)
            self.metrics.clear()
            self.window = LossWindow(self.clock)
        if self.config.tensorboard:
            self.metrics.open_tensorboard()

    def _save(self) -> None:
        """Write the train state (see :mod:`rnnkit.train.state`) with the loop's counters."""
        counters = {"step": self.step, "epoch": self.epoch, "elapsed": self._elapsed(),
                    "units": self.units, "best": self.best, "plateau_best": self.schedule.best,
                    "log_window": self.window.state()}
        save_train_state(self.out / checkpoint.TRAIN_STATE, self.task, self.optimizer, counters)

    def _restore(self, counters: dict) -> None:
        self.step, self.epoch, self.units = counters["step"], counters["epoch"], counters["units"]
        self.elapsed, self.best = counters["elapsed"], counters["best"]
        self.schedule.best = counters["plateau_best"]
        self.window = LossWindow(self.clock, *counters.get("log_window", (0.0, 0, 0.0)))

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(desc=f"epoch {self.epoch + 1}", unit=self.task.unit, unit_scale=True,
                    disable=None if self.config.progress else True, leave=False,
                    dynamic_ncols=True)

    def _elapsed(self) -> float:
        """Training seconds of the run, this process's and those before it."""
        return self.elapsed + (self.clock() - self._started)

"""The training loop: one optimiser step per batch, validation, checkpoints, and the rules
that stop a run.

A run stops when its epochs are done, after ``max_steps`` steps, after ``max_minutes`` of
training (counted across resumes), or when Ctrl-C or SIGTERM asks it to: the step in
flight finishes, the train state is saved and the summary's reason is "interrupted", its
"signal" the one that asked (a second Ctrl-C stops at once). A step limit or time limit
validates once more before saving. A loss or gradient
norm that is not finite raises :class:`TrainingStopped` before the weights change, and the
files on disk stay as the last save left them; so does a validation loss that is not finite
or whose perplexity overflows (inf), before those weights are saved. A start removes the
temporary files a killed write left in the run directory.

In a distributed run (:mod:`rnnkit.train.distributed`) every process runs this loop on its
share of each batch; the processes agree once a step on the loss, the units and the stop
rules, so they validate, save and stop together; process 0 alone writes. Each training line
gives each process's own rate (its share's units over its own seconds: shares of a labelled
task's batches differ) and their sum, gathered once a line.

With ``precision`` bf16 or fp16 the loss is computed under autocast; fp16 scales the loss
(``torch.amp.GradScaler``, its state in the train state) and skips a step whose gradients
overflow, as the scaler decides.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from rnnkit import checkpoint
from rnnkit.train import distributed
from rnnkit.train.config import PRECISIONS, TrainConfig, build_optimizer, check_precision
from rnnkit.train.distributed import SINGLE, World
from rnnkit.train.metrics import LossWindow, MetricsLog, OwnRate
from rnnkit.train.schedule import make_schedule
from rnnkit.train.state import load_train_state, save_train_state
from rnnkit.train.task import Task


# The signals that stop a run after its step, with a resumable checkpoint.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

class TrainingStopped(ValueError):
    """Training cannot go on (the loss became NaN, the validation loss exploded past what a
    float's perplexity holds); the files on disk stay as the last save left them, and the
    message says whether there is a saved model at all."""


class _LossOf(nn.Module):
    """A task's training loss as one module call, for DistributedDataParallel: a task may
    use its model's parameters outside the model's forward (a language model's output
    head), and DDP finds the parameters a step used from what its forward returns."""

    def __init__(self, task: Task):
        super().__init__()
        self.model = task.model                       # registers the parameters
        self._task = (task,)                          # not a submodule

    def forward(self, batch):
        return self._task[0].train_loss(batch)


class Trainer:
    """Train ``task`` into the model directory ``out``.

    ``model_config`` is written to config.json beside the best weights; ``log`` takes one
    line of text per validation and notice; ``clock`` gives seconds (a test may pass a fake
    one); ``world``: this process's place in a distributed run (its batches must be
    sharded already: see :mod:`rnnkit.train.distributed`).
    """

    def __init__(self, task: Task, config: TrainConfig, out: str | Path, model_config: dict,
                 log=print, clock=time.perf_counter, world: World = SINGLE):
        self.task, self.config, self.out = task, config, Path(out)
        self.model_config = model_config
        self.log, self.clock, self.world = (log if world.writer else distributed.quiet), clock, world
        device = next(task.model.parameters()).device
        check_precision(config.precision, device)
        self._loss = (distributed.replica(_LossOf(task), world, device) if world.backend
                      else task.train_loss)
        self._autocast = (nullcontext if config.precision == "fp32" else
                          lambda: torch.autocast(device.type, PRECISIONS[config.precision]))
        self.scaler = (torch.amp.GradScaler(device.type) if config.precision == "fp16"
                       else None)
        self.optimizer = build_optimizer(task.model, config)
        self.schedule = make_schedule(config, self.optimizer)
        self.metrics = MetricsLog(self.out, task.unit, f"{task.name}: {self.out.name}")
        self.window: LossWindow | None = None       # made when fit begins
        self.own_rate: OwnRate | None = None        # … as is this process's own rate
        self.step = self.epoch = self.units = 0
        self.elapsed = 0.0                    # training seconds before this process
        self._started = 0.0                   # the clock when this process's part began
        self.best = math.inf                  # best validation objective: selects the model
        self._stop_requested = False
        self._stop_signal = 0                 # the signal that asked for it (SIGINT, SIGTERM)
        self._stops = (False, False, False)   # the stop rules all processes agreed on
        self.skipped = 0                      # fp16 steps the gradient scaler skipped

    def fit(self, resume: bool = False, resumed=None) -> dict:
        """Train until a stop rule ends the run (see the module docstring); return a summary:
        the reason ("epochs", "converged", "max_steps", "max_minutes" or "interrupted"), the
        step, the epoch, the best validation objective, the minutes of training and the units
        seen. ``resumed``, if given, is called once a resume's train state has loaded."""
        self._begin(resume)
        if resume and resumed is not None:
            resumed()
        # signals reach the main thread only (a fit in another thread: no stop on a signal)
        on_main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._on_stop_signal) for s in STOP_SIGNALS} \
            if on_main else {}
        bar = self._progress_bar()
        reason = "epochs"
        try:
            while self.epoch < self.config.epochs:
                if self.schedule.converged:                 # the halving schedule ended it
                    reason = "converged"
                    break
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
                    self._plot()
                    break
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: C's
            self.metrics.close()
        summary = {"reason": reason, "step": self.step, "epoch": self.epoch,
                   "best_valid_objective": self.best, "minutes": self._elapsed() / 60,
                   "units": self.units}
        if reason == "interrupted":
            self.log(f"saved a resumable checkpoint at step {self.step}; continue with --resume")
            # the same on every process, also one the signal did not reach itself
            summary["signal"] = "SIGTERM" if self._stops_agreed()[2] else "SIGINT"
        return summary

    # -- one step ----------------------------------------------------------------------------

    def _train_step(self, batch) -> tuple[float, int, float]:
        """One optimiser step on ``batch``: (its mean loss, the units it covers — over all
        processes —, the units of this process's share). Raises TrainingStopped before the
        update if the loss or the gradient norm is not finite (an fp16 step whose gradients
        overflow is skipped instead)."""
        self.task.model.train()
        with self._autocast():
            try:
                loss, units = self._loss(batch)
            except RuntimeError as error:       # DDP's, for parameters a step left unused
                raise distributed.unused_parameters_error(error) or error
        loss = loss.float()
        if self.world.size == 1:
            value, all_units = loss.item(), units
        else:      # the loss of the batch of all processes, and the stop rules, in one sum
            units *= getattr(self.task.batches, "share_weight", 1.0)   # 0: a stand-in share
            total, all_units, *self._stops = self.world.sum(
                loss.item() * units if units else 0.0, units, *self._own_stops())
            value = total / all_units
        if not math.isfinite(value):
            raise TrainingStopped(
                f"step {self.step + 1}: the training loss is {value}; stopped. "
                f"{self._kept()}; try a lower --lr or --clip")
        if self.world.size > 1:       # DDP averages the gradients: weight by the share
            loss = loss * (units * self.world.size / all_units)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        del loss                                  # free this step's graph now
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = nn.utils.clip_grad_norm_(self.task.model.parameters(), self.config.clip or math.inf)
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)      # skipped when the gradients overflowed
            self.scaler.update()
            self.skipped += int(self.scaler.get_scale() < scale)
        elif not torch.isfinite(norm):
            raise TrainingStopped(
                f"step {self.step + 1}: the gradient norm is {norm.item()}; stopped before "
                f"updating. {self._kept()}; try a lower --lr or --clip")
        else:
            self.optimizer.step()
        return value, int(all_units), float(units)

    def _kept(self) -> str:
        """What a stopped run leaves: its last good checkpoint, or plainly nothing yet."""
        saved = (self.out / checkpoint.TRAIN_STATE, self.out / checkpoint.WEIGHTS)
        if any(path.is_file() for path in saved):
            return f"The last good checkpoint in {self.out} is kept"
        return (f"No model was saved yet in {self.out} (the run stopped before its first "
                f"checkpoint), so there is nothing to resume or use; start it again without "
                f"--resume (same --out) to restart it in place")

    def _count(self, loss: float, units: int, own: float, bar) -> None:
        """Count a step done (``units`` of all processes, ``own`` of this process's share);
        every ``log_every`` steps write a training line: the mean loss and the rate — in a
        distributed run, each process's own rate (gathered: one all-reduce) and their sum."""
        self.step += 1
        self.units += units
        self.window.add(loss, units)
        self.own_rate.add(own)
        bar.update(units)
        if self.step % self.config.log_every == 0:
            mean, rate = self.window.take()
            own_rate = self.own_rate.take()
            unit, n = self.task.unit, self.world.size
            line = {"split": "train", "loss": mean, "lr": self.schedule.lr}
            postfix = {"loss": f"{mean:.3f}", "lr": f"{self.schedule.lr:.3g}"}
            if n == 1:
                line[f"{unit}_per_s"] = rate
            else:
                rates = self.world.by_process(own_rate)
                total = sum(rates)
                line.update({f"{unit}_per_s": total, "processes": n,
                             f"{unit}_per_s_per_process": total / n,
                             f"{unit}_per_s_by_process": list(rates)})
                postfix[f"{unit}/s"] = f"{total:,.0f}"
                postfix["each"] = f"{min(rates):,.0f}..{max(rates):,.0f}"  # slowest..fastest
            if self.scaler is not None:
                line.update(loss_scale=self.scaler.get_scale(), skipped_steps=self.skipped)
            self._record(line)
            bar.set_postfix(postfix)

    def _stop_reason(self) -> str | None:
        """Why the run ends after this step, if it does (in a distributed run: if it does
        for any process, so that all stop together)."""
        if self.config.max_steps and self.step >= self.config.max_steps:
            return "max_steps"
        # one process: now; several: as all agreed during the step (see _train_step)
        late, interrupted, _ = self._stops_agreed()
        if late:
            return "max_minutes"
        return "interrupted" if interrupted else None

    def _own_stops(self) -> tuple[bool, bool, bool]:
        """(this process's time limit is reached, a signal asked it to stop, that signal
        was SIGTERM)."""
        late = bool(self.config.max_minutes) and \
            self._elapsed() >= self.config.max_minutes * 60
        return late, self._stop_requested, self._stop_signal == signal.SIGTERM

    def _stops_agreed(self) -> tuple:
        """:meth:`_own_stops` of this process alone, or as all processes agreed during the
        step (each true if it is for any process, so that all stop alike)."""
        return self._own_stops() if self.world.size == 1 else self._stops

    def _validate_and_save(self, stop: str | None) -> None:
        """Validate and save when due; a run that stops validates (unless interrupted) and
        saves, once each."""
        cfg = self.config
        if (cfg.eval_every and self.step % cfg.eval_every == 0) or \
                stop in ("max_steps", "max_minutes"):
            self._validate(end_of_epoch=False)
        if (cfg.save_every and self.step % cfg.save_every == 0) or stop:
            self._save()

    def _on_stop_signal(self, signum, frame):
        """Ctrl-C (SIGINT) or SIGTERM (Slurm, Kubernetes): finish the step, save, stop. A
        second Ctrl-C stops at once; any other second signal is the same request again (a
        batch system signals every process of a job, and rnnkit's launcher passes its own
        signal on to its processes)."""
        if self._stop_requested:
            if signum == self._stop_signal == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self._stop_requested, self._stop_signal = True, signum
        if signum == signal.SIGINT:
            self._say("interrupt: finishing this step and saving a resumable checkpoint "
                      "(Ctrl-C again to stop at once)")
        else:
            self._say(f"{signal.Signals(signum).name}: finishing this step and saving a "
                      f"resumable checkpoint")

    # -- epochs and validation ---------------------------------------------------------------

    def _end_epoch(self) -> None:
        """Validate (for the schedule too), rewind the data and the carried state, save."""
        self._validate(end_of_epoch=True)
        self.epoch += 1
        self.task.batches.reset_epoch()
        if hasattr(self.task, "reset_carry"):
            self.task.reset_carry()
        self._save()
        self._plot()

    def _validate(self, end_of_epoch: bool) -> None:
        """Evaluate on "valid", record it, and keep the weights if their objective is the
        best yet; at an epoch end the schedule sees the objective too."""
        self.world.share_buffers(self.task.model)     # validate what process 0 would save
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
            if self.world.writer:
                checkpoint.save_model(self.out, self.task.model, self.model_config)
        if end_of_epoch:        # epoch ends only, so that a run cut short and resumed decays
            self.schedule.update(objective)                 # as one that never stopped
        self._say(f"epoch {self.epoch + 1} step {self.step}: valid {self.task.describe(metrics)}"
                 f"{' (best)' if improved else ''}, lr {self.schedule.lr:.4g}, "
                 f"{self._elapsed() / 60:.1f} min")

    def _say(self, text: str) -> None:
        """``log`` a line while the progress bar may be drawn: the bar (drawn without a
        newline) is wiped first and drawn again below, so that the line starts on its own."""
        from tqdm import tqdm

        with tqdm.external_write_mode():
            self.log(text)

    def _record(self, entry: dict) -> None:
        if self.world.writer:
            self.metrics.record({"step": self.step, "epoch": self.epoch, **entry})

    def _plot(self) -> None:
        if self.world.writer:
            self.metrics.plot()

    # -- start, train state, time --------------------------------------------------------------

    def _begin(self, resume: bool) -> None:
        """Continue from the train state in ``out``, or start afresh from the seed."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._started = self.clock()
        writer = self.world.writer
        if resume:
            self._restore(load_train_state(self.out / checkpoint.TRAIN_STATE, self.task,
                                           self.optimizer, self.world))
            if writer:
                self.metrics.keep_until(self.step)
            self.log(f"resumed {self.out} at epoch {self.epoch + 1}, step {self.step}")
        else:
            seed = self.config.seed + self.world.rank   # each process its own dropout
            torch.manual_seed(seed)
            random.seed(seed)
            if writer:
                self.metrics.clear()
            self.window = LossWindow(self.clock)
        self.own_rate = OwnRate(self.clock)
        if self.config.tensorboard and writer:
            self.metrics.open_tensorboard()

    def _save(self) -> None:
        """Write the train state (see :mod:`rnnkit.train.state`) with the loop's counters."""
        counters = {"step": self.step, "epoch": self.epoch, "elapsed": self._elapsed(),
                    "units": self.units, "best": self.best, "plateau_best": self.schedule.best,
                    "log_window": self.window.state()}
        if schedule := self.schedule.state():           # the halving schedule's flags
            counters["schedule"] = schedule
        if self.scaler is not None:
            counters.update(grad_scaler=self.scaler.state_dict(), skipped_steps=self.skipped)
        save_train_state(self.out / checkpoint.TRAIN_STATE, self.task, self.optimizer, counters,
                         self.world)

    def _restore(self, counters: dict) -> None:
        self.step, self.epoch, self.units = counters["step"], counters["epoch"], counters["units"]
        self.elapsed, self.best = counters["elapsed"], counters["best"]
        self.schedule.best = counters["plateau_best"]
        if "schedule" in counters:
            self.schedule.load_state(counters["schedule"])
        self.window = LossWindow(self.clock, *counters.get("log_window", (0.0, 0, 0.0)))
        if self.scaler is not None and counters.get("grad_scaler"):
            self.scaler.load_state_dict(counters["grad_scaler"])
            self.skipped = counters.get("skipped_steps", 0)

    def _progress_bar(self):
        from tqdm import tqdm

        show = self.config.progress and self.world.writer
        return tqdm(desc=f"epoch {self.epoch + 1}", unit=self.task.unit, unit_scale=True,
                    disable=None if show else True, leave=False,
                    dynamic_ncols=True)

    def _elapsed(self) -> float:
        """Training seconds of the run, this process's and those before it."""
        return self.elapsed + (self.clock() - self._started)

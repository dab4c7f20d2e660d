"""What a run writes for people to read: ``metrics.jsonl``, TensorBoard scalars and
``curves.png``; and the window of training loss behind each training line.

``metrics.jsonl`` holds one JSON object a line, in the order they happened::

    {"step": 50, "epoch": 0, "split": "train", "loss": 5.91, "lr": 20.0, "tok_per_s": 8123.4}
    {"step": 663, "epoch": 0, "split": "valid", "loss": 5.12, "ppl": 167.9, "lr": 20.0}

(the validation lines hold whatever the task's ``evaluate`` returns). In a run of several
processes a training line also holds ``processes``, each process's own rate in rank order
(``tok_per_s_by_process``: the units of its share of the batches over its own seconds),
their mean (``tok_per_s_per_process``); its ``tok_per_s`` is then their sum. With
TensorBoard on,
each number but the step and epoch is also the scalar ``<split>/<name>`` at its step.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

from rnnkit import checkpoint
from rnnkit.files import WriteError, format_bytes
from rnnkit.plotting import new_figure, save_figure

METRICS = "metrics.jsonl"
CURVES = "curves.png"


def perplexity(loss: float) -> float:
    """``exp(loss)`` (the perplexity of a mean loss in nats), ``math.inf`` where that
    overflows a float (a loss past about 709.78 nats, or an infinite loss) and ``nan`` for
    a NaN loss: never an ``OverflowError``. Text shows the infinite value as "inf"."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def require_tensorboard():
    """TensorBoard's ``SummaryWriter``, or a clear error if the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("tensorboard: the 'tensorboard' package is not installed "
                         "(pip install tensorboard)") from None
    return SummaryWriter


class MetricsLog:
    """The metric lines of the run in the model directory ``out``: in ``history`` and in
    ``out/metrics.jsonl``; ``unit`` (what the loss is per, e.g. "tok") and ``title`` label
    the curves."""

    def __init__(self, out: Path, unit: str, title: str):
        self.out, self.unit, self.title = out, unit, title
        self.path = out / METRICS
        self.history: list[dict] = []
        self._writer = None

    def clear(self) -> None:
        """Forget the lines of an earlier run (a fresh start)."""
        self.history = []
        self.path.unlink(missing_ok=True)

    def keep_until(self, step: int) -> None:
        """On resume: keep the lines up to ``step`` (a crash after the checkpoint may have
        written more, the last perhaps cut short)."""
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        self.history = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("step", math.inf) <= step:
                self.history.append(entry)
        checkpoint.atomic_write(self.path, lambda tmp: Path(tmp).write_text(
            "".join(json.dumps(e) + "\n" for e in self.history), encoding="utf-8"))

    def open_tensorboard(self) -> None:
        """Also write every line to TensorBoard, in ``out/tensorboard``."""
        self._writer = require_tensorboard()(str(self.out / "tensorboard"))

    def record(self, entry: dict) -> None:
        """Append a line: ``{"step", "epoch", "split": "train" | "valid", name: number, …}``."""
        self.history.append(entry)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as error:
            if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise WriteError(f"{self.path}: cannot be written (No space left on device: "
                                 f"{format_bytes(shutil.disk_usage(self.out).free)} free); "
                                 f"free some space and resume with --resume",
                                 error.errno) from None
            raise WriteError(f"{self.path}: cannot be written ({error.strerror or error})",
                             error.errno) from None
        if self._writer is not None:
            for key, value in entry.items():
                if key not in ("step", "epoch", "split") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{entry['split']}/{key}", value, entry["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def plot(self) -> None:
        """Training and validation loss against steps, as ``out/curves.png``."""
        train = [(e["step"], e["loss"]) for e in self.history if e["split"] == "train"]
        valid = [(e["step"], e["loss"]) for e in self.history if e["split"] == "valid"]
        fig, ax = new_figure()
        if train:
            ax.plot(*zip(*train), label="training", linewidth=1)
        if valid:
            ax.plot(*zip(*valid), "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel(f"loss (nats per {self.unit})")
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, self.out / CURVES)


class LossWindow:
    """The training loss since the last training line: the sum of loss × units, the units,
    and the seconds on ``clock`` up to the latest step. It is part of the train state
    (``state()``), so that the first line after a resume is the one an unbroken run writes.
    """

    def __init__(self, clock, loss_sum: float = 0.0, units: int = 0, seconds: float = 0.0):
        self.clock = clock
        self.loss_sum, self.units, self.seconds = loss_sum, units, seconds
        self._start = clock() - seconds

    def add(self, loss: float, units: int) -> None:
        """Count a step: its mean loss over its ``units``."""
        self.loss_sum += loss * units
        self.units += units
        self.seconds = self.clock() - self._start

    def take(self) -> tuple[float, float]:
        """(mean loss per unit, units per second) of the window; then start a new one."""
        mean, rate = self.loss_sum / self.units, self.units / (self.clock() - self._start)
        self.loss_sum, self.units, self.seconds = 0.0, 0, 0.0
        self._start = self.clock()
        return mean, rate

    def state(self) -> list:
        """``[loss sum, units, seconds]``: the train state's ``log_window``."""
        return [self.loss_sum, self.units, self.seconds]


class OwnRate:
    """The units of this process's own shares of the batches since the last training line,
    over this process's own seconds on ``clock``: one process's rate in a distributed run.
    Not part of the train state: after a resume it counts from the resume."""

    def __init__(self, clock):
        self.clock, self.units, self._start = clock, 0.0, clock()

    def add(self, units: float) -> None:
        self.units += units

    def take(self) -> float:
        """Units per second since the last ``take`` (or the start); then start again."""
        now = self.clock()
        rate = self.units / (now - self._start) if now > self._start else 0.0
        self.units, self._start = 0.0, now
        return rate

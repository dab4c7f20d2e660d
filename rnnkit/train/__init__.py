"""One training loop for every rnnkit task: optimiser, clipping, schedule, checkpoints,
exact resume, metrics, progress.

A task (language model, classifier, …) supplies the model and four things (see
:class:`Task`): a resumable source of training batches, the loss of a batch, an evaluation,
and any state it carries between batches (the hidden state of truncated BPTT). The loop
never sees argparse or the file formats of a task.

Exact resume: ``train_state.safetensors`` holds the model, the optimiser, the learning-rate
schedule, the random-number generators, the position in the data and the carried state,
all at a step boundary; continuing from it gives the same losses, bit for bit, as a run
that never stopped. It is written at the end of each epoch, every ``save_every`` steps,
when a time or step limit ends the run, and when Ctrl-C asks it to stop (a second Ctrl-C
stops at once; the files on disk stay whole either way).

The files, one job each:

    config.py    TrainConfig (the options) and the optimiser they build
    task.py      Task and BatchSource: what the loop needs from a task
    loop.py      Trainer: the loop and its stop rules
    schedule.py  PlateauSchedule, HalvingSchedule: divide the learning rate when validation
                 stops improving (Mikolov's halving schedule stops the run too)
    state.py     the train state file: save and load, for exact resume
    metrics.py   metrics.jsonl, TensorBoard, curves.png
    distributed.py  several processes (torchrun, DDP): World, joining, the shares

>>> summary = Trainer(task, TrainConfig(epochs=2), "runs/lm", model_config).fit()
"""

from rnnkit.train.config import OPTIMIZERS, TrainConfig, build_optimizer
from rnnkit.train.loop import Trainer, TrainingStopped
from rnnkit.train.metrics import CURVES, METRICS, LossWindow, MetricsLog
from rnnkit.train.schedule import HalvingSchedule, PlateauSchedule
from rnnkit.train.state import load_train_state, save_train_state
from rnnkit.train.task import BatchSource, Task

__all__ = ["TrainConfig", "OPTIMIZERS", "build_optimizer", "Task", "BatchSource", "Trainer",
           "TrainingStopped", "PlateauSchedule", "HalvingSchedule", "save_train_state", "load_train_state",
           "MetricsLog", "LossWindow", "METRICS", "CURVES"]

"""How to train: the options of the loop (:class:`TrainConfig`) and the optimiser they build."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rnnkit.config import check_fields, option
from rnnkit.train.schedule import SCHEDULES

MIN_IMPROVEMENT = 0.003                  # the RNNLM toolkit's default (-min-improvement 1.003)

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    """How to train; every field is a command-line option and a config-file key."""

    epochs: int = option(10, "passes over the training data", resume="budget")
    max_steps: int = option(0, "stop after N steps in all (0: no limit)", resume="budget")
    max_minutes: float = option(0.0, "stop after M minutes of training (0: no limit)",
                                resume="budget")
    optimizer: str = option("sgd", "the optimiser", choices=OPTIMIZERS)
    lr: float = option(20.0, "learning rate")
    momentum: float = option(0.0, "sgd momentum")
    weight_decay: float = option(0.0, "L2 penalty")
    clip: float = option(0.25, "max gradient norm (0: off)")
    lr_decay: float = option(4.0, "divide the lr by this when validation stops improving "
                             "(1: off)")
    lr_schedule: str = option("plateau", "when the lr is divided: plateau (each epoch that "
                              "does not improve validation) or halving (Mikolov's: every epoch "
                              "after the first that improves it by less than "
                              "--min-improvement; the run stops at the second; Mikolov "
                              "divides by 2: --lr-decay 2)",
                              choices=SCHEDULES)
    min_improvement: float = option(MIN_IMPROVEMENT, "halving schedule: the relative improvement of "
                                    "validation an epoch must make")
    seed: int = option(1, "random seed")
    eval_every: int = option(0, "validate every N steps (0: once per epoch)")
    save_every: int = option(0, "resumable checkpoint every N steps (0: once per epoch)")
    log_every: int = option(50, "a metrics line every N steps")
    progress: bool = option(True, "no progress bar", flag="--no-progress", resume="display")
    tensorboard: bool = option(False, "also log to TensorBoard in OUT/tensorboard",
                               resume="display")
    precision: str = option("fp32", "the precision of the forward computations (autocast): "
                            "fp32; bf16 (CPU or GPU); fp16 (GPU, with a gradient scaler). "
                            "Weights, gradients, optimiser state, the hand BPTT engine and "
                            "checkpoints stay fp32", choices=tuple(PRECISIONS))

    init_from: str = option("", "classifier, tagger: start the embedding and recurrent "
                            "layers from this trained word-level language model")

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
                  ("lr_schedule", lambda c: c.lr_schedule in SCHEDULES,
                   f"one of {list(SCHEDULES)}"),
                  ("min_improvement", lambda c: 0 <= c.min_improvement < 1,
                   "a number in [0, 1)"),
                  ("eval_every", lambda c: c.eval_every >= 0, "an int >= 0"),
                  ("save_every", lambda c: c.save_every >= 0, "an int >= 0"),
                  ("log_every", lambda c: c.log_every >= 1, "an int >= 1"),
                  ("precision", lambda c: c.precision in PRECISIONS,
                   f"one of {list(PRECISIONS)}")]
        check_fields(self, checks)
        if self.lr_schedule != "halving" and self.min_improvement != MIN_IMPROVEMENT:
            raise ValueError(f"min_improvement: only for lr_schedule='halving' "
                             f"(--min-improvement needs --lr-schedule halving), got "
                             f"lr_schedule={self.lr_schedule!r}")


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot train in: fp16 needs CUDA (float16 autocast on
    the CPU is slow and has no gradient scaler there)."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16: fp16 trains on a CUDA device only; on the CPU "
                         "use --precision bf16 (or fp32)")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, over the model's trainable parameters (in order: the
    train state numbers the optimiser's entries by this order)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)

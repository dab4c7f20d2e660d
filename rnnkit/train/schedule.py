"""The learning-rate schedule: divide the rate when the validation objective stops improving.

The loop shows it the objective at epoch ends only, so that a run cut short and resumed
decays exactly as one that never stopped.
"""

from __future__ import annotations

import math

import torch


class PlateauSchedule:
    """Divide every learning rate of ``optimizer`` by ``decay`` each time an objective is
    no lower than the best one before it (``best``: that best, infinite before the first).

    >>> schedule = PlateauSchedule(optimizer, decay=4.0)    # lr 1.0
    >>> for objective in (3.0, 2.0, 2.5): schedule.update(objective)   # lr 0.25 after 2.5
    """

    def __init__(self, optimizer: torch.optim.Optimizer, decay: float, best: float = math.inf):
        self.optimizer, self.decay, self.best = optimizer, decay, best

    @property
    def lr(self) -> float:
        """The learning rate now (of the first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def update(self, objective: float) -> None:
        """Take the objective of the latest validation (lower is better)."""
        if objective < self.best:
            self.best = objective
            return
        for group in self.optimizer.param_groups:
            group["lr"] /= self.decay               # decay 1: x / 1 is x, bit for bit

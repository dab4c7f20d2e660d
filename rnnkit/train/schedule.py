"""Learning-rate schedules driven by the validation objective.

- ``plateau``: divide the rate by ``lr_decay`` whenever an epoch ends no better than the best
  before it (:class:`PlateauSchedule`);
- ``halving``: Mikolov's schedule for the RNNLM toolkit (Mikolov 2010; "newbob" in speech
  recognition): keep the rate while each epoch improves the validation objective by at least
  ``min_improvement`` (relative); after the first epoch that does not, divide the rate by
  ``lr_decay`` at every epoch end, and stop at the next epoch that does not
  (:class:`HalvingSchedule`).

The loop shows a schedule the objective at epoch ends only, so that a run cut short and
resumed decays exactly as one that never stopped. The train state keeps a schedule's
``best`` and its ``state()``.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("plateau", "halving")


class PlateauSchedule:
    """Divide every learning rate of ``optimizer`` by ``decay`` each time an objective is
    no lower than the best one before it (``best``: that best, infinite before the first).

    >>> schedule = PlateauSchedule(optimizer, decay=4.0)    # lr 1.0
    >>> for objective in (3.0, 2.0, 2.5): schedule.update(objective)   # lr 0.25 after 2.5
    """

    converged = False                   # this schedule never ends a run

    def __init__(self, optimizer: torch.optim.Optimizer, decay: float, best: float = math.inf):
        self.optimizer, self.decay, self.best = optimizer, decay, best

    @property
    def lr(self) -> float:
        """The learning rate now (of the first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def _divide(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] /= self.decay               # decay 1: x / 1 is x, bit for bit

    def update(self, objective: float) -> None:
        """Take the objective of the latest validation (lower is better)."""
        if objective < self.best:
            self.best = objective
            return
        self._divide()

    def state(self) -> dict:
        """What the train state keeps beyond ``best`` (nothing here)."""
        return {}

    def load_state(self, state: dict) -> None:
        pass


class HalvingSchedule(PlateauSchedule):
    """Mikolov's schedule (see the module docstring): an epoch "stalls" when its objective is
    above ``best · (1 − min_improvement)``; the first stall starts the division at every
    epoch end, the second sets ``converged`` (the loop then stops the run)."""

    def __init__(self, optimizer: torch.optim.Optimizer, decay: float, min_improvement: float,
                 best: float = math.inf):
        super().__init__(optimizer, decay, best)
        self.min_improvement = min_improvement
        self.dividing = self.converged = False

    def update(self, objective: float) -> None:
        stalled = not objective < self.best * (1 - self.min_improvement)
        self.best = min(self.best, objective)
        if stalled:
            self.converged = self.dividing
            self.dividing = True
        if self.dividing and not self.converged:
            self._divide()

    def state(self) -> dict:
        return {"dividing": self.dividing, "converged": self.converged}

    def load_state(self, state: dict) -> None:
        self.dividing, self.converged = state["dividing"], state["converged"]


def make_schedule(config, optimizer: torch.optim.Optimizer) -> PlateauSchedule:
    """The schedule a :class:`~rnnkit.train.TrainConfig` names."""
    if config.lr_schedule == "halving":
        return HalvingSchedule(optimizer, config.lr_decay, config.min_improvement)
    return PlateauSchedule(optimizer, config.lr_decay)

"""What the training loop needs from a task: a model, a resumable source of batches, the
loss of a batch, an evaluation, and (optionally) the state it carries between batches."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from rnnkit.train.distributed import World


class BatchSource(Protocol):
    """The training batches of a task, resumable at any batch boundary."""

    def next_batch(self): ...            # a batch, or None at the end of the epoch
    def reset_epoch(self) -> None: ...
    def state_dict(self) -> dict: ...    # JSON-able: where it stands (saved in the train state)
    def load_state_dict(self, state: dict) -> None: ...

    # For several processes (rnnkit.train.distributed): take process ``rank``'s share of
    # every global batch from now on; ``share_weight`` (optional, default 1) is 0 while the
    # current batch's share is a stand-in whose loss must count for nothing.
    def shard(self, rank: int, processes: int) -> None: ...


class Task(Protocol):
    """What the loop needs from a task."""

    name: str                            # "lm", "classifier", …
    unit: str                            # what ``units`` counts, e.g. "tok"
    model: nn.Module
    batches: BatchSource
    world: World                         # set by the recipe; ``evaluate`` scores its share

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

"""Long-range memory tasks, generated on the fly from a seed, where a plain RNN fails.

- **adding** (Hochreiter & Schmidhuber 1997; Le et al. 2015): input (T, B, 2) — a random
  value in [0, 1) and a marker that is 1 at two steps, one in each half; the target is the
  sum of the two marked values. Predicting 1 always gives MSE 1/6 ≈ 0.167, the baseline.
- **copy** (Arjovsky et al. 2016): ten symbols from {1..8}, T − 1 blanks, a delimiter (9), then
  ten blanks during which the network must repeat the ten symbols. Baseline: cross-entropy
  ``10 log 8 / (T + 20)`` per step (blanks right, symbols guessed).
- **reber**: the embedded Reber grammar (Hochreiter & Schmidhuber 1997); next-symbol
  prediction, scored at the long-range position — the second-to-last symbol, which must
  repeat the second (T or P) across the whole inner string. Baseline: 50%.

:func:`train_memory_task` trains one model per (task, length, cell) for a fixed budget of
steps and reports the test figure against the task's baseline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells import make_cell
from rnnkit.layers import RecurrentStack
from rnnkit.plotting import new_figure, save_figure

TASKS = ("adding", "copy", "reber")
# Any registered cell runs; Adam's learning rate is 1e-3 but where this table says
# otherwise (the IRNN's ReLU recurrence with identity weights needs a smaller one).
LEARNING_RATES = {"irnn": 1e-4}
DEFAULT_LR = 1e-3


# -- the data -------------------------------------------------------------------------------

def adding_batch(batch: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Inputs (T, B, 2) and targets (B,) of the adding problem."""
    values = torch.rand(length, batch, generator=g)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=g)
    second = torch.randint(half, length, (batch,), generator=g)
    marker = torch.zeros(length, batch)
    rows = torch.arange(batch)
    marker[first, rows] = 1.0
    marker[second, rows] = 1.0
    target = values[first, rows] + values[second, rows]
    return torch.stack([values, marker], 2), target


def copy_batch(batch: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Inputs (T + 20, B) and targets (T + 20, B) symbol ids of the copy-memory task.

    Ids: 0 blank, 1..8 symbols, 9 delimiter.
    """
    symbols = torch.randint(1, 9, (10, batch), generator=g)
    total = length + 20
    inputs = torch.zeros(total, batch, dtype=torch.long)
    inputs[:10] = symbols
    inputs[length + 9] = 9
    targets = torch.zeros(total, batch, dtype=torch.long)
    targets[-10:] = symbols
    return inputs, targets


_REBER = {0: [("T", 1), ("P", 2)], 1: [("S", 1), ("X", 3)], 2: [("T", 2), ("V", 4)],
          3: [("X", 2), ("S", 5)], 4: [("P", 3), ("V", 5)]}
REBER_SYMBOLS = "BTPSXVE"


def _reber_string(g: torch.Generator, min_length: int) -> str:
    """A Reber string; until it is ``min_length`` long, only transitions that do not end it
    are drawn (every path of the grammar is a valid string)."""
    s, state = "B", 0
    while state != 5:
        options = _REBER[state]
        if len(s) + 1 < min_length:
            options = [o for o in options if o[1] != 5] or options
        symbol, state = options[int(torch.randint(0, len(options), (1,), generator=g))]
        s += symbol
    return s + "E"


def reber_batch(batch: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Embedded Reber strings (``B{T|P}<inner>{T|P}E``) padded to a common length.

    Inner strings are drawn until one is between ``length`` and ``2 * length`` symbols
    long, so ``length`` sets the distance to remember. Returns inputs
    (T, B), next-symbol targets (T, B) (``-1`` past the end) and the index (B,) of the
    long-range position in the targets.
    """
    strings = []
    while len(strings) < batch:
        inner = _reber_string(g, length)
        if len(inner) > 2 * length:
            continue
        branch = "TP"[int(torch.randint(0, 2, (1,), generator=g))]
        strings.append("B" + branch + inner + branch + "E")
    T = max(len(s) for s in strings) - 1
    inputs = torch.zeros(T, batch, dtype=torch.long)
    targets = torch.full((T, batch), -1, dtype=torch.long)
    position = torch.empty(batch, dtype=torch.long)
    for b, s in enumerate(strings):
        ids = torch.tensor([REBER_SYMBOLS.index(c) for c in s])
        inputs[:len(s) - 1, b] = ids[:-1]
        targets[:len(s) - 1, b] = ids[1:]
        position[b] = len(s) - 3          # predicting the closing T/P
    return inputs, targets, position


# -- the models -------------------------------------------------------------------------------

class MemoryModel(nn.Module):
    """rnnkit recurrent stack (+ embedding for symbol tasks) and a linear read-out."""

    def __init__(self, task: str, cell: str, hidden: int, layers: int = 1):
        super().__init__()
        self.task = task
        inputs = {"adding": 2, "copy": 10, "reber": len(REBER_SYMBOLS)}[task]
        outputs = {"adding": 1, "copy": 9, "reber": len(REBER_SYMBOLS)}[task]
        self.embed = None if task == "adding" else nn.Embedding(inputs, inputs)
        if self.embed is not None:
            nn.init.eye_(self.embed.weight)                  # one-hot inputs
            self.embed.weight.requires_grad_(False)
        declared = make_cell(cell)
        gated = "forget" in declared.gate_names and declared.biases_shift_gates
        self.rnn = RecurrentStack(inputs, hidden, layers, cell=cell,
                                  forget_bias=1.0 if gated else None)   # Jozefowicz et al.
        self.out = nn.Linear(hidden, outputs)

    def forward(self, x: Tensor) -> Tensor:
        if self.embed is not None:
            x = self.embed(x)
        h, _ = self.rnn(x)
        return self.out(h[-1]).squeeze(-1) if self.task == "adding" else self.out(h)


def _loss(model: MemoryModel, batch) -> tuple[Tensor, float]:
    """(training loss, test figure: MSE, cross-entropy, or long-range accuracy)."""
    if model.task == "adding":
        x, y = batch
        mse = F.mse_loss(model(x), y)
        return mse, mse.item()
    if model.task == "copy":
        x, y = batch
        ce = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        return ce, ce.item()
    x, y, position = batch
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
    # the closing T/P repeats the opening one: only memory can predict it
    picked = logits[position, torch.arange(x.shape[1])].argmax(-1)
    accuracy = (picked == y[position, torch.arange(x.shape[1])]).float().mean().item()
    return loss, accuracy


BASELINES = {"adding": lambda T: 1 / 6, "copy": lambda T: 10 * math.log(8) / (T + 20),
             "reber": lambda T: 0.5}
METRIC = {"adding": "test MSE", "copy": "test cross-entropy", "reber": "long-range accuracy"}

_BATCH = {"adding": adding_batch, "copy": copy_batch, "reber": reber_batch}


@dataclass
class MemoryResult:
    task: str
    length: int
    cell: str
    steps: int
    metric: str
    value: float
    baseline: float
    seconds: float

    @property
    def solved(self) -> bool:
        if self.task == "reber":
            return self.value >= 0.99
        return self.value < 0.1 * self.baseline


def train_memory_task(task: str, length: int, cell: str, *, steps: int = 1000,
                      batch: int = 50, hidden: int = 128, layers: int = 1, seed: int = 0,
                      test_batches: int = 4) -> MemoryResult:
    """Train one model on one task for ``steps`` Adam steps; report the test figure."""
    return fit_memory_model(task, length, cell, steps=steps, batch=batch, hidden=hidden,
                            layers=layers, seed=seed, test_batches=test_batches)[1]


def fit_memory_model(task: str, length: int, cell: str, *, steps: int = 1000,
                     batch: int = 50, hidden: int = 128, layers: int = 1, seed: int = 0,
                     test_batches: int = 4) -> tuple[MemoryModel, MemoryResult]:
    """:func:`train_memory_task`, also returning the trained model. Where the cell's paper
    bounds its recurrent weight for sequences of this length
    (``Cell.recurrent_weight_limit``: IndRNN's |u| ≤ 2^(1/T)), every step ends by clamping
    ``weight_hh`` to it."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
    limit = make_cell(cell).recurrent_weight_limit(length)  # an unknown name lists the known
    torch.manual_seed(seed)
    model = MemoryModel(task, cell, hidden, layers)
    recurrent = [p for name, p in model.rnn.named_parameters() if name.startswith("weight_hh")]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=LEARNING_RATES.get(cell, DEFAULT_LR))
    train_g = torch.Generator().manual_seed(seed)
    test_g = torch.Generator().manual_seed(10_000 + seed)
    started = time.perf_counter()
    model.train()
    for _ in range(steps):
        loss, _ = _loss(model, _BATCH[task](batch, length, train_g))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if limit is not None:
            with torch.no_grad():
                for p in recurrent:
                    p.clamp_(-limit, limit)
    model.eval()
    with torch.no_grad():
        values = [_loss(model, _BATCH[task](batch * 4, length, test_g))[1]
                  for _ in range(test_batches)]
    return model, MemoryResult(task, length, cell, steps, METRIC[task],
                               sum(values) / len(values), BASELINES[task](length),
                               time.perf_counter() - started)


def plot_memory_results(results: list[MemoryResult], path) -> None:
    """The test figure against the sequence length, one line per cell, and the baseline."""
    fig, ax = new_figure(6, 4)
    for cell in dict.fromkeys(r.cell for r in results):
        rows = [r for r in results if r.cell == cell]
        ax.plot([r.length for r in rows], [r.value for r in rows], "o-", label=cell)
    rows = sorted({(r.length, r.baseline) for r in results})
    ax.plot([length for length, _ in rows], [b for _, b in rows], "k--", label="baseline")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(results[0].metric)
    if results[0].task != "reber":
        ax.set_yscale("log")
    ax.set_title(f"{results[0].task} problem, {results[0].steps} training steps")
    ax.legend()
    save_figure(fig, path)

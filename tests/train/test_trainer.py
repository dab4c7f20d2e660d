"""The training loop on a toy task, in seconds: exact resume, each stop rule, the plateau
schedule, best-model selection and the train-state format (rnnkit/train/).

The toy task is a one-layer GRU that regresses the running sum of its inputs. It draws
from every source a resumed run must restore: dropout (torch's generator), the batch order
(shuffled by Python's ``random`` at each new epoch), the hidden state carried from batch
to batch (truncated BPTT) and Adam's moments. Its validation numbers can be scripted, so
that the schedule and the model selection meet known values.
"""

import io
import json
import os
import random
import re
import signal
import sys

import pytest
import torch
from torch import nn

from conftest import snapshot
from rnnkit import checkpoint
from rnnkit.train import (METRICS, HalvingSchedule, PlateauSchedule, TrainConfig, Trainer,
                          TrainingStopped, build_optimizer, load_train_state)

BATCHES = 4                                 # batches (optimiser steps) per epoch
T, B, I = 5, 3, 2                           # time steps, sequences and inputs of a batch


class ToyBatches:
    """Batch numbers 0..BATCHES-1 in an order that Python's ``random`` shuffles at each new
    epoch; resumable. ``epoch`` counts the epochs begun; ``exhausted`` is true between the
    end of an epoch and the next ``reset_epoch`` (when the loop validates for the schedule)."""

    def __init__(self):
        self.order, self.position, self.epoch, self.exhausted = list(range(BATCHES)), 0, 0, False

    def next_batch(self):
        if self.position == len(self.order):
            self.exhausted = True
            return None
        self.position += 1
        return self.order[self.position - 1]

    def reset_epoch(self) -> None:
        random.shuffle(self.order)
        self.position, self.epoch, self.exhausted = 0, self.epoch + 1, False

    def state_dict(self) -> dict:
        return {"order": self.order, "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.position, self.epoch = list(state["order"]), state["position"], \
            state["epoch"]


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.rnn = nn.GRU(I, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, x, h=None):                 # x (T, B, I), h (1, B, 4) -> (T, B, 1), h
        y, h = self.rnn(self.drop(x), h)
        return self.out(y), h


class ToyTask:
    """The loop's :class:`rnnkit.train.Task` on synthetic data.

    ``valid``: None to validate on held-out data, or a function of the task giving the
    metrics (scripted numbers). ``hooks``: {n: function(task, loss) -> loss} run in the
    n-th call of ``train_loss`` (1-based): to poison the loss, press Ctrl-C, move a clock.
    ``evaluated`` holds a copy of the weights at each validation.
    """

    name, unit = "toy", "seq"

    def __init__(self, valid=None, hooks=None):
        data = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(BATCHES, T, B, I, generator=data)
        self.targets = self.inputs.sum(-1, keepdim=True).cumsum(1)       # (BATCHES, T, B, 1)
        self.valid_inputs = torch.randn(T, B, I, generator=data)
        self.valid_targets = self.valid_inputs.sum(-1, keepdim=True).cumsum(0)
        torch.manual_seed(0)                                               # the same model
        self.model = ToyModel()                                            # in every run
        self.batches = ToyBatches()
        self.carry = None                                                  # (1, B, 4)
        self.valid, self.hooks, self.calls, self.evaluated = valid, hooks or {}, 0, []

    def train_loss(self, batch):
        prediction, h = self.model(self.inputs[batch], self.carry)
        self.carry = h.detach()
        loss = nn.functional.mse_loss(prediction, self.targets[batch])
        self.calls += 1
        if self.calls in self.hooks:
            loss = self.hooks[self.calls](self, loss)
        return loss, B

    def evaluate(self, split: str) -> dict:
        self.evaluated.append({k: v.clone() for k, v in self.model.state_dict().items()})
        if self.valid is not None:
            return self.valid(self)
        self.model.eval()
        with torch.no_grad():
            prediction, _ = self.model(self.valid_inputs)
        return {"loss": nn.functional.mse_loss(prediction, self.valid_targets).item()}

    def describe(self, metrics: dict) -> str:
        return f"loss {metrics['loss']:.3f}"

    def reset_carry(self) -> None:
        self.carry = None

    def carry_tensors(self) -> dict:
        return {} if self.carry is None else {"h": self.carry}

    def load_carry(self, tensors: dict) -> None:
        self.carry = tensors.get("h")


class FakeClock:
    """A ``time.perf_counter`` that moves only when told to."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "optimizer": "adam", "lr": 0.01, "lr_decay": 2.0,
                          "clip": 1.0, "log_every": 1, "progress": False, **changes})


def fit(task, out, cfg, resume=False, **kwargs) -> tuple[Trainer, dict]:
    trainer = Trainer(task, cfg, out, {"task": "toy"}, log=lambda *_: None, **kwargs)
    return trainer, trainer.fit(resume=resume)


def metric_lines(out, split: str) -> list[dict]:
    lines = (out / METRICS).read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["split"] == split]


def train_lines(out) -> list[tuple]:
    """(step, epoch, loss, lr) of each training line (not the speed: it is timing)."""
    return [(e["step"], e["epoch"], e["loss"], e["lr"]) for e in metric_lines(out, "train")]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def sigint(task, loss):
    signal.raise_signal(signal.SIGINT)
    return loss


# Validation at epoch ends 2.0, 3.0, 2.5 (epochs 2 and 3 are worse: the lr halves twice and
# the weights of epoch 1 stay the best); 5.0 between epoch ends (never the best).
def plateau_valid(task):
    return {"loss": [2.0, 3.0, 2.5][task.batches.epoch] if task.batches.exhausted else 5.0}


# -- exact resume ------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["max_steps", "interrupted"])
def test_resume_is_bit_exact(tmp_path, stop):
    _, whole = fit(ToyTask(valid=plateau_valid), tmp_path / "whole", config(log_every=4))

    # stopped at step 6 (in epoch 2, in a window of training lines), then a crash left
    # metric lines past the checkpoint
    cut = tmp_path / "cut"
    hooks = {6: sigint} if stop == "interrupted" else {}
    _, first = fit(ToyTask(valid=plateau_valid, hooks=hooks), cut, config(
        log_every=4, max_steps=6 if stop == "max_steps" else 0))
    assert (first["reason"], first["step"]) == (stop, 6)
    with open(cut / METRICS, "a") as f:
        f.write(json.dumps({"step": 7, "epoch": 1, "split": "train", "loss": 0.0}) + '\n{"st')
    task = ToyTask(valid=plateau_valid)
    random.seed(99)                                 # as in a new process
    torch.manual_seed(99)
    _, resumed = fit(task, cut, config(log_every=4), resume=True)

    assert resumed["reason"] == whole["reason"] == "epochs"
    assert train_lines(cut) == train_lines(tmp_path / "whole")        # same floats, bit for bit
    assert [e["step"] for e in metric_lines(cut, "train")] == [4, 8, 12]
    assert [e["lr"] for e in metric_lines(cut, "valid") if e["step"] % BATCHES == 0] == \
        [0.01, 0.01, 0.005]
    assert train_lines(cut)[-1][3] == 0.005                            # halved at step 8
    assert (cut / checkpoint.WEIGHTS).read_bytes() == \
        (tmp_path / "whole" / checkpoint.WEIGHTS).read_bytes()         # epoch 1's, both
    state_cut, meta_cut = checkpoint.load_tensors(cut / checkpoint.TRAIN_STATE)
    state_whole, meta_whole = checkpoint.load_tensors(tmp_path / "whole" / checkpoint.TRAIN_STATE)
    assert_same_tensors(state_cut, state_whole)          # model, Adam, carry, torch's rng
    for key in ("step", "epoch", "units", "best", "plateau_best", "optimizer", "batches",
                "python_random"):
        assert meta_cut[key] == meta_whole[key], key
    assert (meta_cut["step"], meta_cut["best"], meta_cut["plateau_best"]) == (12, 2.0, 2.0)
    assert meta_cut["optimizer"]["param_groups"][0]["lr"] == 0.0025    # and again at step 12


def test_resumed_tensors_are_aligned_as_computed_ones(tmp_path):
    """Tensors read from the file lie at its offsets; matrix products (MKL) round
    differently there than at the allocator's 64-byte alignment, which broke bit-exact
    resume now and then (the carried state and Adam's moments must be fresh copies)."""
    fit(ToyTask(), tmp_path, config(max_steps=3))
    task = ToyTask()
    optimizer = build_optimizer(task.model, config())
    load_train_state(tmp_path / checkpoint.TRAIN_STATE, task, optimizer)
    loaded = [task.carry] + [t for entries in optimizer.state.values() for t in entries.values()]
    assert len(loaded) == 1 + 6 * 3
    assert [t.data_ptr() % 64 for t in loaded] == [0] * len(loaded)


def test_train_state_format(tmp_path):
    """The names that existing run directories hold: renaming one breaks their resume."""
    fit(ToyTask(), tmp_path, config(max_steps=3))
    tensors, meta = checkpoint.load_tensors(tmp_path / checkpoint.TRAIN_STATE)
    names = {"model.rnn.weight_ih_l0", "model.rnn.weight_hh_l0", "model.rnn.bias_ih_l0",
             "model.rnn.bias_hh_l0", "model.out.weight", "model.out.bias", "carry.h",
             "rng.torch"}
    names |= {f"optim.{k}.{name}" for k in range(6) for name in ("exp_avg", "exp_avg_sq", "step")}
    assert set(tensors) == names
    assert set(meta) == {"step", "epoch", "elapsed", "units", "best", "plateau_best",
                         "optimizer", "batches", "log_window", "python_random"}
    assert (meta["step"], meta["epoch"], meta["units"]) == (3, 0, 3 * B)
    assert meta["batches"] == {"order": [0, 1, 2, 3], "position": 3, "epoch": 0}
    assert meta["optimizer"]["param_groups"][0]["lr"] == 0.01
    assert meta["plateau_best"] is None                       # no epoch has ended: infinite


def test_resume_without_a_train_state_says_so(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        fit(ToyTask(), tmp_path, config(), resume=True)


# -- stop rules --------------------------------------------------------------------------


def test_max_steps_validates_and_saves_then_stops(tmp_path):
    _, summary = fit(ToyTask(), tmp_path, config(max_steps=6))
    assert (summary["reason"], summary["step"], summary["epoch"], summary["units"]) == \
        ("max_steps", 6, 1, 6 * B)
    assert [e["step"] for e in metric_lines(tmp_path, "train")] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in metric_lines(tmp_path, "valid")] == [4, 6]
    _, meta = checkpoint.load_tensors(tmp_path / checkpoint.TRAIN_STATE)
    assert (meta["step"], meta["epoch"]) == (6, 1)
    assert (tmp_path / "curves.png").is_file()


def test_epochs_end_the_run_before_a_larger_max_steps(tmp_path):
    _, summary = fit(ToyTask(), tmp_path, config(epochs=2, max_steps=100))
    assert (summary["reason"], summary["step"], summary["epoch"]) == ("epochs", 8, 2)


def test_max_minutes_counts_training_time_across_resumes(tmp_path):
    clock = FakeClock()

    def minute(task, loss):                       # each step takes a minute
        clock.now += 60
        return loss

    hooks = {n: minute for n in range(1, 20)}
    _, first = fit(ToyTask(hooks=hooks), tmp_path, config(max_minutes=2.5), clock=clock)
    assert (first["reason"], first["step"], first["minutes"]) == ("max_minutes", 3, 3.0)
    assert [e["step"] for e in metric_lines(tmp_path, "valid")] == [3]
    _, meta = checkpoint.load_tensors(tmp_path / checkpoint.TRAIN_STATE)
    assert (meta["step"], meta["elapsed"]) == (3, 180.0)

    clock.now = 5000.0                            # another process: another origin
    _, second = fit(ToyTask(hooks=hooks), tmp_path, config(max_minutes=5), resume=True,
                    clock=clock)
    assert (second["reason"], second["step"], second["minutes"]) == ("max_minutes", 5, 5.0)


def poison_loss(task, loss):
    return loss * float("nan")


def poison_gradient(task, loss):                  # the value stays finite, the gradient not
    return loss + torch.sqrt(0 * next(task.model.parameters()).sum())


@pytest.mark.parametrize(("poison", "message"), [
    (poison_loss, "step 6: the training loss is nan; stopped"),
    (poison_gradient, "step 6: the gradient norm is nan; stopped before updating")])
def test_non_finite_stops_and_keeps_the_last_good_checkpoint(tmp_path, poison, message):
    before = {}

    def poisoned(task, loss):
        before.update(snapshot(tmp_path))         # as the step-4 save and validation left it
        return poison(task, loss)

    task, previous = ToyTask(hooks={6: poisoned}), signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingStopped, match=message) as stopped:
        fit(task, tmp_path, config(save_every=2))
    assert f"The last good checkpoint in {tmp_path} is kept" in str(stopped.value)
    assert snapshot(tmp_path) == before
    _, meta = checkpoint.load_tensors(tmp_path / checkpoint.TRAIN_STATE)
    assert meta["step"] == 4
    assert signal.getsignal(signal.SIGINT) is previous


def test_ctrl_c_finishes_the_step_and_saves(tmp_path):
    logged, previous = [], signal.getsignal(signal.SIGINT)
    trainer = Trainer(ToyTask(hooks={3: sigint}), config(), tmp_path, {"task": "toy"},
                      log=logged.append)
    summary = trainer.fit()
    assert (summary["reason"], summary["step"]) == ("interrupted", 3)
    _, meta = checkpoint.load_tensors(tmp_path / checkpoint.TRAIN_STATE)
    assert meta["step"] == 3
    assert metric_lines(tmp_path, "valid") == []                  # no validation: at once
    assert logged[-1] == "saved a resumable checkpoint at step 3; continue with --resume"
    assert signal.getsignal(signal.SIGINT) is previous


def test_sigterm_finishes_the_step_and_saves_as_ctrl_c_does(tmp_path):
    """SIGTERM (what Slurm and Kubernetes send) asks for what Ctrl-C asks for; a SIGINT
    after it (a launcher passes a signal on to its processes, and a batch system
    signals every process) is the same request, not a second Ctrl-C."""
    def sigterm_then_sigint(task, loss):
        signal.raise_signal(signal.SIGTERM)
        return sigint(task, loss)

    logged, previous = [], signal.getsignal(signal.SIGTERM)
    trainer = Trainer(ToyTask(hooks={3: sigterm_then_sigint}), config(), tmp_path,
                      {"task": "toy"}, log=logged.append)
    summary = trainer.fit()
    assert (summary["reason"], summary["signal"], summary["step"]) == \
        ("interrupted", "SIGTERM", 3)
    _, meta = checkpoint.load_tensors(tmp_path / checkpoint.TRAIN_STATE)
    assert meta["step"] == 3
    assert "SIGTERM: finishing this step and saving a resumable checkpoint" in logged
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    def twice(task, loss):
        sigint(task, loss)
        return sigint(task, loss)

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        fit(ToyTask(hooks={3: twice}), tmp_path, config())
    assert not (tmp_path / checkpoint.TRAIN_STATE).exists()
    assert signal.getsignal(signal.SIGINT) is previous


# -- the schedule and the model selection --------------------------------------------------


def test_plateau_schedule_divides_when_the_objective_stops_improving():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = PlateauSchedule(optimizer, decay=4.0)
    lrs = []
    for objective in [3.0, 2.0, 2.5, 1.5, 1.5, 1.9]:
        schedule.update(objective)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.25, 0.25, 0.0625, 0.015625]
    assert schedule.best == 1.5


def test_halving_schedule_follows_the_rnnlm_toolkit():
    # The toolkit's rule, by hand: an epoch "stalls" unless its loss is below the best so
    # far by 1% (min_improvement 0.01); the first stall starts the halving at every epoch
    # end (that one included), the second ends training.
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = HalvingSchedule(optimizer, decay=2.0, min_improvement=0.01)
    lrs, ends = [], []
    for objective in [5.0, 4.0, 3.98, 3.5, 3.0, 3.1]:
        schedule.update(objective)
        lrs.append(optimizer.param_groups[0]["lr"])
        ends.append(schedule.converged)
    # 4.0 → 3.98 is 0.5% (a stall: halving from here); 3.5, 3.0 improve; 3.1 is worse
    assert lrs == [1.0, 1.0, 0.5, 0.25, 0.125, 0.125]
    assert ends == [False] * 5 + [True]
    assert (schedule.best, schedule.dividing) == (3.0, True)
    again = HalvingSchedule(optimizer, decay=2.0, min_improvement=0.01)
    again.load_state(schedule.state())
    assert (again.dividing, again.converged) == (True, True)


def test_the_halving_schedule_ends_a_run_and_a_resume_says_so(tmp_path):
    ends = [3.0, 2.99, 2.0, 2.995, 1.0]          # stalls at epochs 2 and 4

    def valid(task):
        return {"loss": ends[task.batches.epoch]}

    cfg = config(epochs=5, lr=1.0, lr_decay=2.0, optimizer="sgd", lr_schedule="halving",
                 min_improvement=0.01)
    _, summary = fit(ToyTask(valid=valid), tmp_path, cfg)
    assert (summary["reason"], summary["epoch"]) == ("converged", 4)
    lr_by_epoch = {e["epoch"]: e["lr"] for e in metric_lines(tmp_path, "train")}
    assert lr_by_epoch == {0: 1.0, 1: 1.0, 2: 0.5, 3: 0.25}
    _, meta = checkpoint.load_tensors(tmp_path / checkpoint.TRAIN_STATE)
    assert (meta["plateau_best"], meta["schedule"]) == (2.0, {"dividing": True, "converged": True})
    from rnnkit.tasks.recipe import finished
    assert "halving schedule" in finished(tmp_path, cfg)["why"]


def test_min_improvement_needs_the_halving_schedule():
    with pytest.raises(ValueError, match="min_improvement: only for lr_schedule='halving'"):
        TrainConfig(min_improvement=0.01)
    with pytest.raises(ValueError, match="lr_schedule: expected one of"):
        TrainConfig(lr_schedule="newbob")


def test_schedule_looks_at_epoch_ends_only(tmp_path):
    ends = [3.0, 2.0, 2.5, 1.5, 1.8, 1.9]

    def valid(task):              # every validation between epoch ends is far worse
        return {"loss": ends[task.batches.epoch] if task.batches.exhausted else 9.0}

    fit(ToyTask(valid=valid), tmp_path, config(epochs=6, lr=1.0, lr_decay=4.0, eval_every=1,
                                               optimizer="sgd"))
    lr_by_epoch = {e["epoch"]: e["lr"] for e in metric_lines(tmp_path, "train")}
    assert lr_by_epoch == {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.25, 4: 0.25, 5: 0.0625}
    _, meta = checkpoint.load_tensors(tmp_path / checkpoint.TRAIN_STATE)
    assert meta["optimizer"]["param_groups"][0]["lr"] == 0.015625
    assert meta["plateau_best"] == 1.5


@pytest.mark.parametrize(("metrics", "best_epoch", "best"), [
    ([{"loss": 1.0, "objective": 0.5}, {"loss": 0.5, "objective": 0.9},
      {"loss": 2.0, "objective": 0.3}, {"loss": 0.1, "objective": 0.4}], 2, 0.3),
    ([{"loss": 1.0}, {"loss": 0.5}, {"loss": 2.0}, {"loss": 0.1}], 3, 0.1)],
    ids=["objective", "loss"])
def test_the_best_validation_selects_the_model(tmp_path, metrics, best_epoch, best):
    task = ToyTask(valid=lambda task: metrics[task.batches.epoch])
    _, summary = fit(task, tmp_path, config(epochs=4))
    assert summary["best_valid_objective"] == best
    saved, _ = checkpoint.load_tensors(tmp_path / checkpoint.WEIGHTS)
    same = [k for k, weights in enumerate(task.evaluated)
            if all(torch.equal(saved[name], weights[name]) for name in saved)]
    assert same == [best_epoch]
    assert checkpoint.read_config(tmp_path, "toy")["task"] == "toy"


def test_missing_tensorboard_is_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="pip install tensorboard"):
        fit(ToyTask(), tmp_path, config(tensorboard=True))


def test_a_train_line_is_the_mean_loss_since_the_last(tmp_path):
    losses = []

    def keep(task, loss):
        losses.append(loss.item())
        return loss

    fit(ToyTask(hooks={n: keep for n in range(1, 5)}), tmp_path, config(epochs=1, log_every=2))
    lines = metric_lines(tmp_path, "train")
    assert [e["step"] for e in lines] == [2, 4]
    assert [e["loss"] for e in lines] == [(losses[0] * B + losses[1] * B) / (2 * B),
                                          (losses[2] * B + losses[3] * B) / (2 * B)]
    assert all(e["seq_per_s"] > 0 for e in lines)


def test_a_validation_line_starts_its_own_line_under_the_progress_bar(tmp_path, monkeypatch):
    """tqdm draws its bar without a newline; a line logged while it shows must not run on
    from the bar's last frame (stdout and stderr share one terminal)."""
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    Trainer(ToyTask(), config(epochs=1, eval_every=2, progress=True), tmp_path,
            {"task": "toy"}).fit()
    text = screen.getvalue()
    starts = [m.start() for m in re.finditer(r"epoch 1 step \d+: valid", text)]
    assert len(starts) == 3 and "seq/s" in text                 # the bar was drawn
    assert [text[k - 1] for k in starts] == ["\r"] * 3, text      # the bar wiped first


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_exact_kernels_fix_cudas_choices_and_leave_the_cpu_alone(monkeypatch, device):
    """Exact resume on CUDA needs cuDNN's deterministic algorithms (not its timed choice)
    and cuBLAS's fixed workspace; the recipe sets them before the first product. The CPU's
    kernels are deterministic: nothing is changed there. (The flags exist without CUDA.)"""
    from rnnkit.train.state import exact_kernels

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    exact_kernels(torch.device(device))
    on_cuda = device == "cuda"
    assert torch.backends.cudnn.deterministic is on_cuda
    assert torch.backends.cudnn.benchmark is not on_cuda
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (":4096:8" if on_cuda else None)

"""Training on several processes: PyTorch's own distributed engine, seen by the loop as a
:class:`World`.

A run started by ``torchrun`` (or ``rnnkit train … --nproc N``, which starts torchrun's
launcher) finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
in its environment; :func:`join` then opens the process group — gloo on the CPU, NCCL on
CUDA (device ``cuda:LOCAL_RANK``) — and returns the process's :class:`World`. Without them,
a run is the one-process world :data:`SINGLE`, and nothing here communicates.

What each part of a run does with the world:

- the batch sources take their share of every global batch (``shard``): N processes with
  a per-process batch ``b`` see exactly the batches of one process with batch ``N·b``;
- the loop wraps the loss of a batch in ``DistributedDataParallel`` (gradients averaged
  across processes during backward), weights each process's loss by its share of the
  batch's units, and agrees on the loss, the units and the stop rules once a step; each
  training line gathers every process's own rate (:meth:`World.by_process`);
- evaluations score each process's share of the validation data and combine them
  (:meth:`World.sum`, :meth:`World.gather`), so every process takes the same decisions;
- process 0 alone writes: checkpoints, metrics, curves, the progress bar, the log.

A process that dies makes the others' next collective fail (the connection closes), or
time out after ``timeout`` seconds; :func:`lost_contact` turns that into a clear error. A
launcher that dies (killed, out of memory) has its processes sent SIGTERM (Linux): they
finish their step, save and stop, as on a batch system's cancel, rather than train on
unseen, holding the run directory.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_ENV = "RNNKIT_DIST_TIMEOUT"     # seconds a process waits for the others
TIMEOUT = 1800.0                        # … unless the environment says otherwise
MAX_TIMEOUT = 7 * 24 * 3600.0           # a week: torch keeps timeouts in C ints


class LostContact(ValueError):
    """Another process of a distributed run stopped answering: it died, or a collective
    waited past the timeout. Every surviving process reports it, in one line (a ValueError
    for that), and exits 1: the run failed, the input was fine."""

    exit_code = 1


class FollowerStop(ValueError):
    """A process other than 0 stops because process 0 did (its start was refused, or
    training stopped): process 0 reports why, the others stay silent."""


class StartRefused(FollowerStop):
    """A process other than 0 stops because the run's start was refused (by process 0 or
    by one of the others, :meth:`Start.agree`): the first process of each other machine
    says why too, so that every machine's terminal shows it."""


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` processes of a run."""

    rank: int = 0                 # 0 .. size-1; process 0 writes the run's files
    size: int = 1
    local_rank: int = 0           # on this machine: selects the GPU
    backend: str = ""             # "gloo" or "nccl" ("" for one process)

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's files (process 0)."""
        return self.rank == 0

    def share(self, items):
        """This process's contiguous share of a sequence (a list or a tensor along its first
        dimension); shares differ in length by at most one and, in rank order, make up
        ``items``."""
        n = len(items)
        return items[n * self.rank // self.size: n * (self.rank + 1) // self.size]

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each number summed over all processes (float64), the same on every process."""
        if self.size == 1:
            return tuple(float(v) for v in values)
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        _collective(dist.all_reduce, t)
        return tuple(t.tolist())

    def gather(self, part: list) -> list:
        """Every process's ``part`` (a list of picklable items), concatenated in rank order;
        the same on every process (``share`` then ``gather`` keeps a sequence's order)."""
        if self.size == 1:
            return list(part)
        parts: list = [None] * self.size
        _collective(dist.all_gather_object, parts, list(part))
        return [item for p in parts for item in p]

    def by_process(self, value: float) -> tuple[float, ...]:
        """Every process's number ``value``, in rank order, the same on every process (one
        all-reduce of ``size`` numbers: each process puts its own in its place)."""
        values = [0.0] * self.size
        values[self.rank] = value
        return self.sum(*values)

    def gather_to_writer(self, part):
        """Every process's ``part`` in rank order on process 0 (None elsewhere)."""
        if self.size == 1:
            return [part]
        parts = [None] * self.size if self.writer else None
        _collective(dist.gather_object, part, parts, 0)
        return parts

    def broadcast(self, value):
        """Process 0's ``value`` (picklable), on every process."""
        if self.size == 1:
            return value
        box = [value if self.writer else None]
        _collective(dist.broadcast_object_list, box, 0)
        return box[0]

    def share_buffers(self, model: torch.nn.Module) -> None:
        """Process 0's buffers of ``model`` (batch-norm running statistics) on every process:
        in training each process updates them from its own share of the batch."""
        if self.size > 1:
            for buffer in model.buffers():
                _collective(dist.broadcast, buffer, 0)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        self.sum(0.0)

    def await_start(self) -> dict:
        """In a process other than 0: wait for :meth:`Start.tell` of process 0; its news
        (``{"finished": summary}`` for a run with nothing left to train, else what process
        0 told: its run directory, its command…), or FollowerStop with process 0's error."""
        news = self.broadcast(None)
        if news["error"] is not None:
            raise FollowerStop(f"process 0 stopped: {news['error']}")
        return news

    def answer_start(self, problem: str | None) -> None:
        """In a process other than 0, after :meth:`await_start`: this process's verdict on
        the start (None: it can follow; else why not) to process 0's :meth:`Start.agree`;
        FollowerStop if any process refused (process 0 says why)."""
        self.gather_to_writer(problem)
        verdict = self.broadcast(None)
        if verdict is not None:
            raise StartRefused(verdict)

    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


SINGLE = World()


class Start:
    """Process 0 tells the others, once, how the start of a run went (they wait in
    :meth:`World.await_start`): fine, finished already, or refused with an error."""

    def __init__(self, world: World):
        self.world, self.told = world, False

    def tell(self, error: BaseException | None = None, finished: dict | None = None,
             **news) -> None:
        """The start's outcome to every other process: ``error``, ``finished`` or fine, with
        ``news`` (picklable) for the others to check (see :meth:`agree`)."""
        if self.told or self.world.size == 1 or isinstance(error, LostContact):
            return
        self.told = True
        text = None if error is None else (str(error) or type(error).__name__)
        self.world.broadcast({"error": text, "finished": finished, **news})

    def agree(self) -> None:
        """After a fine :meth:`tell`: every other process's check of it
        (:meth:`World.answer_start`). The first refusal is a ValueError here, naming the
        process; the others stop without a word."""
        if self.world.size == 1:
            return
        problems = self.world.gather_to_writer(None)
        refused = next((f"process {rank}: {problem}" for rank, problem in enumerate(problems)
                        if problem is not None), None)
        self.world.broadcast(refused)
        if refused is not None:
            raise ValueError(refused)


def timeout() -> float:
    """Seconds a process waits for the others in a collective: ``RNNKIT_DIST_TIMEOUT`` or
    :data:`TIMEOUT`."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else TIMEOUT
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds > 0 and at "
                         f"most {MAX_TIMEOUT:.0f} (a week)")
    return value


def is_lost_contact(error: BaseException) -> bool:
    """Whether ``error`` is a failed collective (a process died or stopped answering)."""
    if isinstance(error, LostContact):
        return True
    if not isinstance(error, RuntimeError) or not dist.is_initialized():
        return False
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection", "connection",
                                  "Socket", "socket", "timed out", "Timed out", "timeout",
                                  "pair closure"))   # gloo: "Application timeout caused
                                                     # pair closure" (a peer that hangs)


def launched() -> bool:
    """Whether this process was started by torchrun (its environment names a world)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_writer_process() -> bool:
    """Whether this process is process 0 of its run (or the only one), from the environment
    torchrun gives it — before any process group is opened."""
    return os.environ.get("RANK", "0") == "0"


def join(device: torch.device, timeout: float) -> tuple[World, torch.device]:
    """This process's world and device: :data:`SINGLE` and ``device`` unchanged outside
    torchrun; under it, the process group opened (gloo for the CPU, NCCL for CUDA, one GPU
    per process: ``cuda:LOCAL_RANK``), collectives timing out after ``timeout`` seconds."""
    if not launched():
        return SINGLE, device
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError(f"torchrun's environment is malformed: RANK={os.environ['RANK']!r}, "
                         f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}") from None
    if not dist.is_available():
        raise ValueError("this PyTorch has no torch.distributed; it cannot train under torchrun")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"--device cuda: process {rank} is number {local_rank} on its "
                             f"machine, which has {count} GPU(s); start at most {count} "
                             f"processes per machine (--nproc {count})")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    _stop_with_the_launcher()
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        except (RuntimeError, dist.DistError) as error:
            raise LostContact(f"process {rank}: could not join the run's other processes at "
                              f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
                              f" ({first_line(error)})") from None
    return World(rank, size, local_rank, backend), device


def _stop_with_the_launcher() -> None:
    """Linux, under torch's launcher (torchrun, or rnnkit's ``--nproc``): have the kernel
    send this process SIGTERM when its parent, the launcher, dies; if rnnkit's launcher
    died before that (its pid in :data:`LAUNCHER_ENV` is no longer the parent), stop now.
    Elsewhere (another launcher: srun, mpirun) nothing."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):       # no prctl: an orphan trains on, as in torch
        return
    if os.environ.get(LAUNCHER_ENV, str(os.getppid())) != str(os.getppid()):
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1                    # <linux/prctl.h>
LAUNCHER_ENV = "RNNKIT_LAUNCHER_PID"    # rnnkit's launcher's pid, set for its processes


def leave(world: World, finished: bool = False) -> None:
    """Close the process group :func:`join` opened. A run that ``finished`` (no error)
    first waits for every process to get here: process 0 may still be writing its sample
    while the others are done, and a process group torn down under a peer's open
    connections could abort that peer (seen as a SIGABRT of process 1, once in a CI run)."""
    if dist.is_initialized():          # a run of one process has a group too (torchrun)
        if finished and world.size > 1:
            try:
                world.barrier()
            except LostContact:
                pass                    # a peer gone already: nothing left to wait for
        dist.destroy_process_group()


def _collective(op, *args) -> None:
    try:
        op(*args)
    except (RuntimeError, dist.DistError) as error:
        raise lost_contact(error) from None


def lost_contact(error: BaseException) -> LostContact:
    """The error a surviving process reports when a collective fails: the others' end
    closed (one died), or the timeout passed (one hangs; the launcher names it)."""
    rank = dist.get_rank() if dist.is_initialized() else "?"
    text = str(error)
    if any(word in text for word in ("timed out", "Timed out", "timeout", "Timeout")):
        what = (f"timed out waiting for the others after {timeout():g} s — one of them "
                f"hangs; a process that hangs is stopped")
    else:
        what = "lost contact with the run's other processes — one of them stopped"
    return LostContact(f"process {rank} {what} ({first_line(error)}); this process stops "
                       f"too, and the run's files stay as process 0 last wrote them (resume "
                       f"with --resume if a checkpoint was saved)")


def quiet(text: str) -> None:
    """The log of a process other than process 0: it says nothing."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (at most 300 characters, less a leading C++
    source location such as gloo's ``[…/unbound_buffer.cc:78]``), for a one-line report of
    what a library raised."""
    text = str(error).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\] ", "", text[0]) if text else ""
    line = line.split(" This is typically caused by")[0]      # gloo's advice, and "GLHF!"
    return line[:300] or type(error).__name__


def replica(model: torch.nn.Module, world: World, device: torch.device):
    """``model`` wrapped in ``DistributedDataParallel`` for ``world`` (``model`` itself
    outside torchrun; a torchrun run of one process is wrapped too)."""
    if not world.backend:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=leaves_parameters_unused(model))


def unused_parameters_error(error: BaseException) -> ValueError | None:
    """DDP's error at the step after one that left parameters unused in a model that did not
    declare it (:func:`leaves_parameters_unused`), said plainly: a ValueError naming the
    way out. None for any other error."""
    if "finished reduction in the prior iteration" not in str(error):
        return None
    return ValueError("a step left some of the model's trainable parameters without a "
                      "gradient, and a run of several processes must be told so: set "
                      "leaves_parameters_unused = True on the module that holds them (see "
                      "rnnkit.train.distributed.leaves_parameters_unused), or train in one "
                      "process")


def leaves_parameters_unused(model: torch.nn.Module) -> bool:
    """Whether a step of ``model`` may leave some of its parameters unused, which a module
    declares with a true ``leaves_parameters_unused`` (the adaptive softmax: a tail cluster
    that no target of the batch falls in).

    Only then does DDP look for them (``find_unused_parameters``: a walk over the autograd
    graph every step, and a warning each step when it finds none); their gradient stays
    None on every process, as in one process, so that Adam, momentum and weight decay leave
    them alone too. Every other model uses all its trainable parameters in every step, and
    DDP without the walk raises at the next step if one did not. (``static_graph`` would
    skip the walk too, but it holds the first step's set of used parameters for the whole
    run, which the adaptive softmax breaks.)"""
    return any(getattr(module, "leaves_parameters_unused", False) for module in model.modules())

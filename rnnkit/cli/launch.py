"""``rnnkit train TASK --nproc N``: start the run's processes with torchrun's own launcher
(``torch.distributed.launcher``), each running the same command without the launch
options; with ``--nnodes M --rdzv-endpoint HOST:PORT`` on every machine, a run of M
machines meets at that rendezvous (c10d, hosted by the machine HOST names).

The processes print their own messages; the launcher adds one line when a process fails
without saying why (killed, crashed, stopped answering) and returns the run's exit code:
0, 2 (bad input, said by process 0, or a rendezvous that fails), 130 (Ctrl-C: the processes
finish their step and save; resumable), 143 (SIGTERM, as Slurm and Kubernetes send it:
the same as Ctrl-C, resumable), 1 (a process failed, or lost contact with the others:
one died or hung), 128 + N for another signal N that stops it (SIGHUP, SIGQUIT).

What torch's launcher leaves unbounded, the launcher bounds itself (Linux, from /proc): a
rendezvous that overruns ``--rdzv-timeout`` (torch's connection retries can add half again)
ends at the deadline, and a process that is suspended (SIGSTOP) when a failed run is
stopped is killed at once instead of after torch's 30 s of grace.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

RDZV_TIMEOUT = 60       # seconds a rendezvous of several machines waits for them
# The launch options: (flag, help); their values never reach the processes.
FLAGS = {
    "--nproc": "train in N processes on this machine (torchrun's launcher; gloo on the CPU, "
               "NCCL with --device cuda: one GPU each)",
    "--nnodes": "with --rdzv-endpoint: the number of machines of the run (start the same "
                "command on each; default 1)",
    "--rdzv-endpoint": "with --nnodes: HOST:PORT where the machines of a run meet (the "
                       "machine HOST names hosts the rendezvous)",
    "--rdzv-timeout": "with --nnodes and --rdzv-endpoint: seconds to wait for all machines "
                      f"to join before giving up (default {RDZV_TIMEOUT})",
}
# PyTorch's C++ notices (TORCH_CPP_LOG_LEVEL), unless the environment sets a level: none
# from the launcher (a failed rendezvous attempt prints a stack trace; its failures are ours
# to say in one line), errors only from the processes (NCCL's watchdog, say)
LAUNCHER_CPP_LOG_LEVEL = "FATAL"
PROCESS_CPP_LOG_LEVEL = "ERROR"
FAILED_GRACE = 1.0      # seconds a suspended process has to act on a failed run's SIGTERM


def quiet_launcher(argv: list[str]) -> None:
    """Silence the C++ notices of this process when ``argv`` (``sys.argv`` as :mod:`rnnkit`
    sees it while it is imported, before torch) is a command line of ``python -m rnnkit`` or
    ``rnnkit`` that starts a distributed run: a ``train`` with a launch option."""
    if len(argv) < 2 or Path(argv[0]).name not in ("-m", "rnnkit", "__main__.py"):
        return
    if "train" in argv[1:] and any(token.split("=")[0] in FLAGS for token in argv[1:]):
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", LAUNCHER_CPP_LOG_LEVEL)


def add_options(parser) -> None:
    """The launch options of ``rnnkit train TASK``."""
    group = parser.add_argument_group("several processes or machines")
    group.add_argument("--nproc", type=int, metavar="N", help=FLAGS["--nproc"])
    group.add_argument("--nnodes", type=int, metavar="M", help=FLAGS["--nnodes"])
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help=FLAGS["--rdzv-endpoint"])
    group.add_argument("--rdzv-timeout", type=float, metavar="S", help=FLAGS["--rdzv-timeout"])


def wanted(args) -> bool:
    """Whether the command asks to start processes (any launch option given)."""
    from rnnkit.train import distributed

    given = [f for f in FLAGS if getattr(args, _key(f)) is not None]
    if given and distributed.launched():
        raise ValueError(f"{given[0]}: this process was started by torchrun already; give "
                         f"the launch options to torchrun or to rnnkit, not both")
    return bool(given)


def check(args, device: str) -> tuple[int, int, str, float]:
    """(processes per machine, machines, rendezvous endpoint, its timeout), checked."""
    from rnnkit.train import distributed

    distributed.timeout()               # RNNKIT_DIST_TIMEOUT, refused before anything starts
    nproc = 1 if args.nproc is None else args.nproc
    nnodes = 1 if args.nnodes is None else args.nnodes
    if nproc < 1:
        raise ValueError(f"--nproc: expected a number of processes >= 1, got {nproc}")
    if nnodes < 1:
        raise ValueError(f"--nnodes: expected a number of machines >= 1, got {nnodes}")
    import torch

    if (device or "cpu").startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ValueError("--device cuda: no CUDA device is available here, so NCCL cannot "
                             "run; leave out --device to train on the CPU (gloo)")
        if nproc > gpus:
            raise ValueError(f"--nproc {nproc}: this machine has {gpus} GPU(s) and each process "
                             f"takes one; give --nproc {gpus}{' or fewer' if gpus > 1 else ''}")
    else:
        cores = _cores()
        if nproc > cores:
            raise ValueError(f"--nproc {nproc}: this machine has {cores} CPU core(s) for this "
                             f"program; more processes than cores only slow each other down "
                             f"(give --nproc {cores}{' or fewer' if cores > 1 else ''})")
    endpoint = args.rdzv_endpoint or ""
    if nnodes > 1 and not endpoint:
        raise ValueError(f"--nnodes {nnodes}: the machines need a meeting point; give "
                         f"--rdzv-endpoint HOST:PORT (the same on every machine)")
    if args.rdzv_timeout is not None and not endpoint:
        raise ValueError("--rdzv-timeout: it bounds the wait at a rendezvous of several "
                         "machines; give it with --nnodes M and --rdzv-endpoint HOST:PORT")
    if endpoint:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--rdzv-endpoint: expected HOST:PORT, got {endpoint!r}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"--rdzv-endpoint {endpoint}: port {port} is out of range "
                             f"(1 to 65535)")
        if args.nnodes is None:
            raise ValueError(f"--rdzv-endpoint {endpoint}: it is where the machines of a run "
                             f"meet; give --nnodes M too (the number of machines, the same on "
                             f"every machine)")
        try:
            socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise ValueError(f"--rdzv-endpoint {endpoint}: the host name {host} does not "
                             f"resolve ({error.strerror}); give a name or address of the "
                             f"machine that hosts the rendezvous") from None
    timeout = RDZV_TIMEOUT if args.rdzv_timeout is None else args.rdzv_timeout
    if not 1 <= timeout <= distributed.MAX_TIMEOUT:   # torch's read timeout: whole seconds
        raise ValueError(f"--rdzv-timeout: expected seconds from 1 to "
                         f"{distributed.MAX_TIMEOUT:.0f} (a week), got {timeout:g}")
    return nproc, nnodes, endpoint or "localhost:0", timeout


def launch(args, device: str, out: str | None) -> int:
    """Start the processes of the run and wait for them; the run's exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import elastic_launch

    from rnnkit.train import distributed
    from rnnkit.train.loop import STOP_SIGNALS

    nproc, nnodes, endpoint, timeout = check(args, device)
    _process_environment(nproc)
    command = [*sys.argv[:0], "-m", "rnnkit", *without_launch_options(args.argv)]
    late = (f"--rdzv-endpoint {endpoint}: the run's machines did not meet within {timeout:g} "
            f"s{{why}}; check the address, that the same command runs on all {nnodes} "
            f"machines, and that the port is open")
    watch = _Watch(timeout if args.rdzv_endpoint else None, late.format(why=""), nproc)
    watch.start()
    try:
        elastic_launch(_config(nproc, nnodes, endpoint, timeout),
                       entrypoint=sys.executable)(*command)
    except ChildFailedError as error:
        return _failed(error, out, watch.killed)
    except SignalException as error:   # torch's launcher passed the signal on to the processes
        if error.sigval not in STOP_SIGNALS:     # SIGHUP, SIGQUIT: they were stopped
            print(f"rnnkit: error: stopped by {error.sigval.name}; the processes were stopped"
                  f"{_what_is_kept(out)}", file=sys.stderr)
        return 128 + error.sigval      # Ctrl-C, SIGTERM: they saved and said so: 130, 143
    except (RendezvousError, RuntimeError, TimeoutError) as error:
        why = distributed.first_line(error.__cause__ or error)
        if not watch.workers:                       # the machines did not meet
            raise ValueError(late.format(why=f" ({why})")) from None
        # they met, and the rendezvous was lost later: a machine's launcher ended (its
        # processes failed, or it was killed) and with it the run
        where = f"the run's other machines at --rdzv-endpoint {endpoint}" if nnodes > 1 \
            else "the run's rendezvous"
        print(f"rnnkit: error: lost contact with {where} ({why}); the processes here were "
              f"stopped{_what_is_kept(out)}", file=sys.stderr)
        return 1
    finally:
        watch.stop()
        os.environ.pop(distributed.LAUNCHER_ENV, None)       # its processes' only
    return 0


def _process_environment(nproc: int) -> None:
    """What the processes inherit: PyTorch's C++ errors only (this process's own notices
    were silenced by :func:`quiet_launcher`), the machine's cores shared between them, and
    this process's pid (they stop if it dies)."""
    from rnnkit.train import distributed

    os.environ[distributed.LAUNCHER_ENV] = str(os.getpid())
    if os.environ.get("TORCH_CPP_LOG_LEVEL", LAUNCHER_CPP_LOG_LEVEL) == LAUNCHER_CPP_LOG_LEVEL:
        os.environ["TORCH_CPP_LOG_LEVEL"] = PROCESS_CPP_LOG_LEVEL
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, _cores() // nproc))
    for name in list(logging.root.manager.loggerDict):      # its notices: ours say it
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _cores() -> int:
    """The CPU cores this program may run on (its affinity, where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1


def _config(nproc: int, nnodes: int, endpoint: str, timeout: float):
    """torchrun's launch configuration of the run. A signal to the launcher (Ctrl-C,
    SIGTERM from Slurm or Kubernetes, …) is passed on to the processes, which get
    ``shutdown_timeout`` to finish their step and save before they are killed."""
    from torch.distributed.launcher.api import LaunchConfig

    from rnnkit.train import distributed

    run_id = "rnnkit-" + (endpoint.replace(":", "-") if nnodes > 1 else uuid.uuid4().hex)
    return LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, run_id=run_id,
        rdzv_backend="c10d", rdzv_endpoint=endpoint,
        rdzv_configs={"join_timeout": timeout, "read_timeout": timeout, "timeout": timeout},
        max_restarts=0, monitor_interval=0.2, shutdown_timeout=int(distributed.timeout()))


def _what_is_kept(out: str | None) -> str:
    """The end of a failed run's line: its last good checkpoint and how to go on, or that
    it has none yet."""
    from rnnkit import checkpoint

    if out and (Path(out) / checkpoint.TRAIN_STATE).is_file():
        return f"; the last good checkpoint in {out} is kept. Continue with --resume"
    return ("; no checkpoint was saved yet, so there is nothing to resume: start it again "
            "without --resume")


def _failed(error, out: str | None, killed: set[int]) -> int:
    """The exit code of a failed run; a line for a process that died without a word, or
    that stopped answering (``killed``: the pids the launcher's watch killed)."""
    codes = {rank: failure.exitcode for rank, failure in error.failures.items()}
    from rnnkit.train.loop import STOP_SIGNALS

    for stopped in (128 + s for s in STOP_SIGNALS):   # saved, resumable (their own message)
        if any(code == stopped for code in codes.values()):
            return stopped
    if all(code == 2 for code in codes.values()):
        return 2                                   # bad input, said by the processes
    kept = _what_is_kept(out)
    hung = [(rank, f.pid) for rank, f in sorted(error.failures.items()) if f.pid in killed]
    for rank, pid in hung:          # the cause: the others timed out waiting for it
        print(f"rnnkit: error: process {rank} (pid {pid}) stopped answering (suspended, "
              f"SIGSTOP), so the others timed out waiting for it; it was killed{kept}",
              file=sys.stderr)
    if hung:
        return 1
    rank, first = error.get_first_failure()         # the cause; the others were stopped
    if first.exitcode < 0:
        name = signal.Signals(-first.exitcode).name
        print(f"rnnkit: error: process {rank} (pid {first.pid}) was killed by {name}; the "
              f"other processes were stopped{kept}", file=sys.stderr)
        return 1
    return 2 if first.exitcode == 2 else 1


class _Watch(threading.Thread):
    """What torch's launcher leaves unbounded, watched from /proc (Linux; elsewhere it
    watches nothing): the rendezvous (``deadline`` seconds, None for none; past it, no
    process started, the launcher says ``late`` and exits 2 — torch's connection retries
    can overrun their timeout by half again), and a process the launcher's SIGTERM cannot
    stop because it is suspended (SIGSTOP): killed after FAILED_GRACE seconds instead of
    torch's fixed 30 s, its pid kept in ``killed`` so that the run's failure names it."""

    def __init__(self, deadline: float | None, late: str, expected: int):
        super().__init__(name="rnnkit-launch-watch", daemon=True)
        self.expected = expected        # the processes this machine starts
        self.deadline = None if deadline is None else time.monotonic() + deadline + 1.0
        self.late, self.killed = late, set()
        self.workers: list[int] = []    # the processes seen started: the machines met
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        stuck_since: dict[int, float] = {}
        while not self._stopping.wait(0.25):
            if len(self.workers) < self.expected:        # they start one by one
                found = _children()
                if found is None:
                    return                  # /proc cannot say: torch's own bounds
                self.workers = sorted(set(self.workers) | set(found))
            if not self.workers and self.deadline is not None and \
                    time.monotonic() > self.deadline:
                # nothing to clean up: no process started; the main thread is inside
                # torch's C++ retries, where no Python exception reaches it
                print(f"rnnkit: error: {self.late}", file=sys.stderr, flush=True)
                os._exit(2)
            for pid in self.workers:
                if _stopped_with_sigterm(pid):
                    since = stuck_since.setdefault(pid, time.monotonic())
                    if time.monotonic() - since > FAILED_GRACE and pid not in self.killed:
                        self.killed.add(pid)
                        _kill(pid)
                else:
                    stuck_since.pop(pid, None)


def _children() -> list[int] | None:
    """The pids of this process's children (the run's processes once started); None where
    /proc cannot say."""
    me, found = str(os.getpid()), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue                # gone meanwhile
            if stat.rpartition(")")[2].split()[1] == me:      # after "(name)": state, ppid
                found.append(int(entry))
    return found


def _stopped_with_sigterm(pid: int) -> bool:
    """Whether process ``pid`` is suspended (state T) with a SIGTERM waiting for it."""
    try:
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return False
    bit = 1 << (signal.SIGTERM - 1)
    pending = int(status.get("ShdPnd", "0"), 16) | int(status.get("SigPnd", "0"), 16)
    return status.get("State", "").strip().startswith("T") and bool(pending & bit)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass                            # gone meanwhile


def without_launch_options(argv: list[str]) -> list[str]:
    """``argv`` less the launch options and their values."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in FLAGS:
            skip = True
        elif not any(token.startswith(f + "=") for f in FLAGS):
            kept.append(token)
    return kept


def _key(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")

"""``rnnkit train TASK --nproc N``: start the run's processes with torchrun's own launcher
(``torch.distributed.launcher``), each running the same command without the launch
options; with ``--nnodes M --rdzv-endpoint HOST:PORT`` on every machine, a run of M
machines meets at that rendezvous (c10d, hosted by the machine HOST names).

The processes print their own messages; the launcher adds one line when a process fails
without saying why (killed, crashed) and returns the run's exit code: 0, 2 (bad input, said
by process 0), 130 (interrupted, resumable) or 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid

from rnnkit.train import distributed

# The launch options: (flag, help); their values never reach the processes.
FLAGS = {
    "--nproc": "train in N processes on this machine (torchrun's launcher; gloo on the CPU, "
               "NCCL with --device cuda: one GPU each)",
    "--nnodes": "with --rdzv-endpoint: the number of machines of the run (start the same "
                "command on each; default 1)",
    "--rdzv-endpoint": "HOST:PORT where the machines of a run meet (the machine HOST names "
                       "hosts the rendezvous)",
    "--rdzv-timeout": "seconds to wait for all machines to join before giving up (default 60)",
}
RDZV_TIMEOUT = 60


def add_options(parser) -> None:
    """The launch options of ``rnnkit train TASK``."""
    group = parser.add_argument_group("several processes or machines")
    group.add_argument("--nproc", type=int, metavar="N", help=FLAGS["--nproc"])
    group.add_argument("--nnodes", type=int, metavar="M", help=FLAGS["--nnodes"])
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help=FLAGS["--rdzv-endpoint"])
    group.add_argument("--rdzv-timeout", type=float, metavar="S", help=FLAGS["--rdzv-timeout"])


def wanted(args) -> bool:
    """Whether the command asks to start processes (any launch option given)."""
    given = [f for f in FLAGS if getattr(args, _key(f)) is not None]
    if given and distributed.launched():
        raise ValueError(f"{given[0]}: this process was started by torchrun already; give "
                         f"the launch options to torchrun or to rnnkit, not both")
    return bool(given)


def check(args, device: str) -> tuple[int, int, str, float]:
    """(processes per machine, machines, rendezvous endpoint, its timeout), checked."""
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
                             f"takes one; give --nproc {gpus} or fewer")
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
        if nproc > cores:
            raise ValueError(f"--nproc {nproc}: this machine has {cores} CPU core(s) for this "
                             f"program; more processes than cores only slow each other down "
                             f"(give --nproc {cores} or fewer)")
    endpoint = args.rdzv_endpoint or ""
    if nnodes > 1 and not endpoint:
        raise ValueError(f"--nnodes {nnodes}: the machines need a meeting point; give "
                         f"--rdzv-endpoint HOST:PORT (the same on every machine)")
    if endpoint:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--rdzv-endpoint: expected HOST:PORT, got {endpoint!r}")
    timeout = RDZV_TIMEOUT if args.rdzv_timeout is None else args.rdzv_timeout
    if not timeout > 0:
        raise ValueError(f"--rdzv-timeout: expected seconds > 0, got {timeout}")
    return nproc, nnodes, endpoint or "localhost:0", timeout


def launch(args, device: str, out: str | None) -> int:
    """Start the processes of the run and wait for them; the run's exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nproc, nnodes, endpoint, timeout = check(args, device)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")   # the processes' C++ notices
    if "OMP_NUM_THREADS" not in os.environ:         # the cores shared between the processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    run_id = "rnnkit-" + (endpoint.replace(":", "-") if nnodes > 1 else uuid.uuid4().hex)
    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, run_id=run_id,
        rdzv_backend="c10d", rdzv_endpoint=endpoint,
        rdzv_configs={"join_timeout": timeout, "read_timeout": timeout, "timeout": timeout},
        max_restarts=0, monitor_interval=0.2,
        shutdown_timeout=int(distributed.timeout()))    # Ctrl-C: time for the step and save

    command = [*sys.argv[:0], "-m", "rnnkit", *without_launch_options(args.argv)]
    for name in list(logging.root.manager.loggerDict):      # its notices: ours say it
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*command)
    except ChildFailedError as error:
        return _failed(error, out)
    except SignalException as error:   # Ctrl-C (SIGINT), SIGTERM: passed on to the processes,
        if error.sigval == signal.SIGINT:         # which save and stop (their own message)
            return 130
        raise ValueError(f"stopped by {error.sigval.name}; the processes were stopped. The "
                         f"last good checkpoint{f' in {out}' if out else ''} is kept; continue "
                         f"with --resume") from None
    except (RendezvousError, RuntimeError, TimeoutError) as error:   # the machines did not meet
        raise ValueError(f"--rdzv-endpoint {endpoint}: the run's machines did not meet "
                         f"within {timeout:g} s ({distributed.first_line(error)}); check the address, "
                         f"that the same command runs on all {nnodes} machines, and that "
                         f"the port is open") from None
    return 0


def _failed(error, out: str | None) -> int:
    """The exit code of a failed run; a line for a process that died without a word."""
    codes = {rank: failure.exitcode for rank, failure in error.failures.items()}
    if any(code == 130 for code in codes.values()):
        return 130
    if all(code == 2 for code in codes.values()):
        return 2                                   # bad input, said by the processes
    rank, first = error.get_first_failure()         # the cause; the others were stopped
    if first.exitcode < 0:
        name = signal.Signals(-first.exitcode).name
        kept = f"; the last good checkpoint in {out} is kept" if out else ""
        print(f"rnnkit: error: process {rank} (pid {first.pid}) was killed by {name}; the "
              f"other processes were stopped{kept}. Continue with --resume", file=sys.stderr)
        return 1
    return 2 if first.exitcode == 2 else 1


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

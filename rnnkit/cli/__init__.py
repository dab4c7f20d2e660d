"""The ``rnnkit`` command line: parse, then call the library; nothing else lives here.

Every command has ``--help``. Bad input ends with one line ``rnnkit: error: …`` on stderr
and exit code 2, never a traceback. An error that is not bad input says so with its own
``exit_code``: :class:`rnnkit.train.distributed.LostContact` (a process of a distributed
run died or hung) ends with exit code 1. A training stopped by Ctrl-C ends with 130, by
SIGTERM with 143 (both save a resumable checkpoint first).

The files, one job each:

    parsing.py   one-line errors, the arguments every command shares
    options.py   the options of ``rnnkit train TASK``, made of the config declarations
    train.py     ``rnnkit train TASK`` for every task of :mod:`rnnkit.tasks`
    launch.py    ``rnnkit train TASK --nproc N``: torchrun's launcher, several processes
    use.py       eval, predict, score, generate, translate: using a trained model
    diagnose.py  check, diagnose, activations, bench: looking inside
    export.py    export: a trained model as ONNX or torch.export graphs
    serve.py     serve: the HTTP JSON API and the web playground
    transcribe.py  transcribe: speech to text with a recogniser
    caption.py   caption: captions of images, and the attention of each word
"""

from __future__ import annotations

import argparse
import os
import sys

from rnnkit.cli.parsing import Parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (the task options read the registries now)."""
    from rnnkit.cli import caption, diagnose, export, serve, train, transcribe, use

    parser = Parser(prog="rnnkit", description="Recurrent neural networks: cells with "
                    "hand-derived BPTT, language models, classifiers, taggers, translators, "
                    "diagnostics.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    diagnose.add_check(commands)
    train.add_commands(commands)
    use.add_commands(commands)
    diagnose.add_commands(commands)
    export.add_commands(commands)
    serve.add_commands(commands)
    transcribe.add_commands(commands)
    caption.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``rnnkit ARGV``; returns the exit code."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.run(args)
    except BrokenPipeError:             # `rnnkit generate … | head`: the reader has had enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # no second error while Python flushes stdout
        return 0
    except (ValueError, OSError) as error:
        if not _said_by_process_0(error):
            print(f"rnnkit: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130


def _said_by_process_0(error: BaseException) -> bool:
    """Whether, in a process other than 0 of a distributed run, ``error`` is one that
    process 0 reports too (its start was refused; training stopped on a loss all share)."""
    from rnnkit.train import TrainingStopped
    from rnnkit.train.distributed import FollowerStop, StartRefused, is_writer_process

    if isinstance(error, StartRefused):       # said on every machine: by its first process
        return not is_writer_process() and os.environ.get("LOCAL_RANK", "0") != "0"
    return not is_writer_process() and isinstance(error, (FollowerStop, TrainingStopped))


__all__ = ["main", "build_parser"]

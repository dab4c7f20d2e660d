"""The parser's pieces that every command shares: one-line errors, a command on a model
directory, and the ``--device`` and ``--json`` options."""

from __future__ import annotations

import argparse
import sys


class UsageError(ValueError):
    """A command line argparse cannot parse."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``rnnkit: error: …`` line and exit code 2,
    and which takes a flag only spelled out (no abbreviations: ``--valid`` is not
    ``--valid-fraction``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but arguments no option takes are refused by the command they
        follow, whose --help lists the options ("see 'rnnkit train lm --help'", not the
        top level's)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self._command_of(sys.argv[1:] if args is None else list(args)).error(
                f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def _command_of(self, argv: list) -> argparse.ArgumentParser:
        """The parser of the (sub)command ``argv`` names: the top level's subcommands
        followed word by word."""
        parser = self
        for token in map(str, argv):
            commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if not commands:
                break
            if token in commands[0].choices:
                parser = commands[0].choices[token]
        return parser


def model_command(commands, name: str, summary: str, description: str, run,
                  model_help: str = "model directory") -> argparse.ArgumentParser:
    """A command ``rnnkit NAME DIR …`` that ``run(args)`` carries out."""
    parser = commands.add_parser(name, help=summary, description=description)
    parser.add_argument("model", metavar="DIR", help=model_help)
    parser.set_defaults(run=run)
    return parser


def device_and_json(parser: argparse.ArgumentParser, json_help: str, device: bool = True):
    """The ``--device`` (default cpu) and ``--json`` options."""
    if device:
        parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--json", action="store_true", help=json_help)

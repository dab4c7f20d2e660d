"""The ``rnnkit`` command line: parse, then call the library; nothing else lives here.

Every command has ``--help``. Bad input ends with one line ``rnnkit: error: …`` on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_check(args) -> int:
    from rnnkit.check import check_all

    rows = check_all()
    if args.json:
        print(json.dumps([{**row.__dict__, "ok": row.ok} for row in rows], indent=2))
    else:
        print(f"{'cell':18s} {'|bptt - autograd|':>18s} {'gradcheck':>10s} "
              f"{'|rnnkit - torch.nn|':>20s}  ok")
        for row in rows:
            twin = "-" if row.torch_nn is None else f"{row.torch_nn:.1e}"
            print(f"{row.cell:18s} {row.bptt_vs_autograd:18.1e} "
                  f"{'pass' if row.gradcheck else 'FAIL':>10s} {twin:>20s}  "
                  f"{'yes' if row.ok else 'NO'}")
    return 0 if all(row.ok for row in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit", description="Recurrent neural networks: cells with hand-derived "
        "BPTT, language models, diagnostics.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    check = commands.add_parser(
        "check", help="verify every cell's hand BPTT against autograd and torch.nn",
        description="Compare each cell's hand-derived backward with autograd of the same "
        "forward (float64, gradcheck) and with torch.nn's twin (float32).")
    check.add_argument("--json", action="store_true", help="print the figures as JSON")
    check.set_defaults(run=_cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"rnnkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

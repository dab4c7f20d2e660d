"""``rnnkit export``: a trained model as ONNX or torch.export graphs (see
:mod:`rnnkit.export` and docs/export.md)."""

from __future__ import annotations

import shlex
import sys

from rnnkit.cli.parsing import model_command


def run_export(args) -> int:
    """Export ``args.model`` into ``args.out``; print what was written."""
    from rnnkit.export import FORMATS, export_model

    if args.format not in FORMATS:
        raise ValueError(f"--format: expected one of {list(FORMATS)}, got {args.format!r}")
    command = shlex.join(["rnnkit", *args.argv])
    meta = export_model(args.model, args.out, args.format, force=args.force, command=command,
                        int8=args.int8)
    for name, graph in meta["graphs"].items():
        inputs = ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in graph["inputs"])
        print(f"{args.out}/{graph['file']}: {inputs}")
    print(f"{args.out}/export.json: {meta['task']} model, {len(meta['graphs'])} graph(s), "
          f"files {', '.join(meta['vocabulary_files']) or 'none'}", file=sys.stderr)
    return 0


def add_commands(commands) -> None:
    """The parser of ``rnnkit export``."""
    from rnnkit.export import FORMATS

    ex = model_command(
        commands, "export", "write a model as ONNX or torch.export graphs",
        "Export a trained model to the folder --out: a language model as a one-step graph "
        "and a whole-sequence graph (a conditioned one also as an initial-state graph), a "
        "classifier or tagger as one graph, a translator as an "
        "encoder graph and a decoder-step graph — every recurrent state an explicit input "
        "and output, batch and sequence axes dynamic — with export.json (inputs, outputs, "
        "states, special ids) and the model's vocabulary files. See docs/export.md.",
        run_export)
    ex.add_argument("--format", default="onnx", choices=FORMATS,
                    help="onnx (for onnxruntime and other ONNX runtimes; default) or "
                    "torch-export (.pt2 programs for torch users)")
    ex.add_argument("--out", required=True, metavar="PATH",
                    help="the folder to write (refused if it exists and is not empty)")
    ex.add_argument("--int8", action="store_true",
                    help="onnx: quantise every graph's matrix products to int8 "
                    "(onnxruntime's dynamic quantisation; about 4x smaller, faster on CPUs)")
    ex.add_argument("--force", action="store_true",
                    help="write into a folder that is not empty, replacing the export's files")

"""``rnnkit transcribe DIR FILES…``: the transcript of each audio file by a recogniser."""

from __future__ import annotations

import json

from rnnkit.cli.parsing import device_and_json, model_command


def run_transcribe(args) -> int:
    from rnnkit.checkpoint import read_config
    from rnnkit.tasks import recognizer

    task = read_config(args.model).get("task")
    if task != recognizer.TASK:
        raise ValueError(f"{args.model}: 'rnnkit transcribe' is for recognizer models, this "
                         f"is a {task!r} model")
    if args.lm_weight is not None and not args.lm:
        raise ValueError("--lm-weight: only with --lm FILE")
    if args.beam < 1:
        raise ValueError(f"--beam: expected >= 1, got {args.beam}")
    if args.lm and args.beam == 1:
        raise ValueError("--lm: the n-gram model is used by beam search; give --beam > 1")
    texts = recognizer.transcribe_files(
        args.model, args.files, beam=args.beam, lm=args.lm,
        lm_weight=0.5 if args.lm_weight is None else args.lm_weight,
        word_bonus=args.word_bonus, device=args.device)
    if args.json:
        print(json.dumps([{"file": f, "text": t} for f, t in zip(args.files, texts)],
                         indent=2, ensure_ascii=False))
    else:
        print("".join(f"{f}\t{t}\n" for f, t in zip(args.files, texts)), end="")
    return 0


def add_commands(commands) -> None:
    """The parser of ``transcribe``."""
    tr = model_command(
        commands, "transcribe", "transcribe audio files with a speech recogniser",
        "Print 'FILE<TAB>transcript' for each audio file (WAV at the model's sample rate, "
        "or a .npy feature file for a model trained on them): greedy CTC decoding, or beam "
        "search (pyctcdecode) with --beam N, optionally with a word n-gram model (--lm).",
        run_transcribe, model_help="recognizer model directory")
    tr.add_argument("files", nargs="+", metavar="FILE", help="WAV (or .npy feature) files")
    tr.add_argument("--beam", type=int, default=1, help="beam width (1: greedy, the default)")
    tr.add_argument("--lm", metavar="FILE", help="word n-gram model for beam search (ARPA or "
                    "KenLM binary; needs the kenlm module)")
    tr.add_argument("--lm-weight", type=float, default=None, help="weight of the n-gram's "
                    "log-probability (pyctcdecode's alpha; 0.5)")
    tr.add_argument("--word-bonus", type=float, default=1.0, help="score added per word in "
                    "beam search (pyctcdecode's beta; 1)")
    device_and_json(tr, "print [{file, text}] as JSON")

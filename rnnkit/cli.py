"""The ``rnnkit`` command line: parse, then call the library; nothing else lives here.

Every command has ``--help``. Bad input ends with one line ``rnnkit: error: …`` on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path


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


# -- rnnkit train lm ------------------------------------------------------------------------
# (flag, destination group, config key, type, help). Every option may also be given in a
# TOML file (--config), under its key; the command line overrides the file.

def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


_TRAIN_OPTIONS = [
    ("--epochs", "train", "epochs", int, "passes over the training data"),
    ("--max-steps", "train", "max_steps", int, "stop after N steps in all (0: no limit)"),
    ("--max-minutes", "train", "max_minutes", float,
     "stop after M minutes of training (0: no limit; 4 for the default corpus)"),
    ("--optimizer", "train", "optimizer", str, "sgd | adam | adamw"),
    ("--lr", "train", "lr", float, "learning rate"),
    ("--momentum", "train", "momentum", float, "sgd momentum (default 0)"),
    ("--weight-decay", "train", "weight_decay", float, "L2 penalty (default 0)"),
    ("--clip", "train", "clip", float, "max gradient norm (0: off)"),
    ("--lr-decay", "train", "lr_decay", float,
     "divide the lr by this when validation stops improving at an epoch end (1: off)"),
    ("--seed", "train", "seed", int, "random seed (default 1)"),
    ("--eval-every", "train", "eval_every", int, "validate every N steps (0: per epoch)"),
    ("--save-every", "train", "save_every", int, "resumable checkpoint every N steps"),
    ("--log-every", "train", "log_every", int, "metrics line every N steps (default 50)"),
    ("--tensorboard", "train", "tensorboard", bool, "also log to TensorBoard in OUT/tensorboard"),
]

_LM_OPTIONS = [
    # data
    ("--data", "data", "data", str, "text file or folder with train/valid[/test] files "
     "(default: a corpus of Python standard-library source built on the spot)"),
    ("--level", "data", "level", str, "char | word | bpe (default char)"),
    ("--valid-fraction", "data", "valid_fraction", float,
     "share of lines held out for validation when there is no valid file (default 0.1)"),
    ("--min-count", "data", "min_count", int, "rarer tokens become <unk> (default 1)"),
    ("--max-vocab", "data", "max_vocab", int, "keep the most frequent N tokens (0: all)"),
    ("--bpe-vocab-size", "data", "bpe_vocab_size", int, "BPE vocabulary size (default 8000)"),
    ("--batch-size", "data", "batch_size", int, "streams per batch (char 32, word/bpe 20)"),
    ("--bptt", "data", "bptt", int, "truncated-BPTT window (char 100, word/bpe 35)"),
    ("--eval-batch-size", "data", "eval_batch_size", int, "streams when evaluating (10)"),
    ("--random-length", "data", "random_length", bool, "AWD-LSTM's random window length"),
    ("--sentence-mode", "data", "sentence_mode", bool,
     "reset the state at every line (lines shuffled) instead of carrying it"),
    # model
    ("--cell", "model", "cell", str, "rnn | lstm | gru (default lstm)"),
    ("--nonlinearity", "model", "nonlinearity", str, "rnn: tanh | relu | sigmoid"),
    ("--peephole", "model", "peephole", bool, "lstm: peephole connections"),
    ("--reset-before", "model", "reset_before", bool,
     "gru: reset gate before the recurrent product (Cho et al.)"),
    ("--embedding-size", "model", "embedding_size", int, "0: same as --hidden"),
    ("--hidden", "model", "hidden_size", int, "hidden units per layer (default 256)"),
    ("--layers", "model", "num_layers", int, "recurrent layers (default 2)"),
    ("--dropout", "model", "dropout", float, "dropout on embeddings, between layers, output"),
    ("--locked-dropout", "model", "locked_dropout", bool, "one dropout mask per sequence"),
    ("--embedding-dropout", "model", "embedding_dropout", float, "drop whole word types"),
    ("--weight-dropout", "model", "weight_dropout", float, "DropConnect on recurrent weights"),
    ("--tie-weights", "model", "tie_weights", bool, "share input and output embeddings"),
    ("--softmax", "model", "softmax", str, "full | class | adaptive (default full)"),
    ("--classes", "model", "num_classes", int, "class softmax: classes (0: about sqrt(V))"),
    ("--cutoffs", "model", "adaptive_cutoffs", _ints, "adaptive softmax cutoffs, e.g. 2000,10000"),
    ("--backend", "model", "backend", str, "auto | bptt | native | autograd"),
    ("--init", "model", "init", str, "uniform | orthogonal | identity"),
]
_LM_OPTIONS += _TRAIN_OPTIONS

_DATA_SOURCE = [
    ("--data", "data", "data", str, "folder with train / dev (or valid) / test files, or one "
     "file whose last --valid-fraction is held out"),
    ("--train", "data", "train", str, "training file (with --valid, instead of --data)"),
    ("--valid", "data", "valid", str, "validation file (with --train)"),
    ("--valid-fraction", "data", "valid_fraction", float,
     "share held out for validation from a single --data file (default 0.1)"),
]

_CLASSIFIER_OPTIONS = _DATA_SOURCE + [
    ("--lowercase", "data", "lowercase", bool, "lowercase the text"),
    ("--level", "data", "level", str, "word | bpe (byte-level BPE subwords; default word)"),
    ("--bpe-vocab-size", "data", "bpe_vocab_size", int, "BPE vocabulary size (default 8000)"),
    ("--min-count", "data", "min_count", int, "rarer words become <unk> (default 1)"),
    ("--max-vocab", "data", "max_vocab", int, "keep the most frequent N words (0: all)"),
    ("--batch-size", "data", "batch_size", int, "examples per batch (default 32)"),
    ("--cell", "model", "cell", str, "rnn | lstm | gru (default lstm)"),
    ("--embedding-size", "model", "embedding_size", int, "word embedding size (default 300)"),
    ("--hidden", "model", "hidden_size", int, "hidden units per direction (default 150)"),
    ("--layers", "model", "num_layers", int, "recurrent layers (default 1)"),
    ("--unidirectional", "model", "unidirectional", bool, "one direction instead of two"),
    ("--pooling", "model", "pooling", str, "final | mean | max | attention (default max)"),
    ("--dropout", "model", "dropout", float, "dropout (default 0.5)"),
    ("--embedding-dropout", "model", "embedding_dropout", float, "drop whole word types"),
    ("--word-dropout", "model", "word_dropout", float,
     "replace training words by <unk> with this probability (default 0)"),
    ("--embedding-init", "model", "embedding_init", float,
     "embeddings drawn from U(-x, x) (default 0.25; 0: N(0, 1))"),
    ("--backend", "model", "backend", str, "auto | bptt | native | autograd"),
] + _TRAIN_OPTIONS

_TAGGER_OPTIONS = _DATA_SOURCE + [
    ("--column", "data", "column", str, "CoNLL-U tag column: upos | xpos (default upos)"),
    ("--batch-size", "data", "batch_size", int, "sentences per batch (default 32)"),
    ("--cell", "model", "cell", str, "rnn | lstm | gru (default lstm)"),
    ("--embedding-size", "model", "embedding_size", int, "word embedding size (default 100)"),
    ("--hidden", "model", "hidden_size", int, "hidden units per direction (default 200)"),
    ("--layers", "model", "num_layers", int, "recurrent layers (default 2)"),
    ("--char-embedding-size", "model", "char_embedding_size", int,
     "character embedding size (default 32)"),
    ("--char-hidden", "model", "char_hidden_size", int,
     "character encoder units per direction (default 64; 0: no character encoder)"),
    ("--dropout", "model", "dropout", float, "dropout (default 0.33)"),
    ("--word-dropout", "model", "word_dropout", float,
     "replace training words by <unk> with this probability (default 0.05)"),
    ("--embedding-init", "model", "embedding_init", float,
     "word and character embeddings drawn from U(-x, x) (default 0: N(0, 1))"),
    ("--backend", "model", "backend", str, "auto | bptt | native | autograd"),
] + _TRAIN_OPTIONS

_TRANSLATOR_OPTIONS = [
    ("--data", "data", "data", str, "folder of {split}.{lang} files (or {split}.tsv pairs)"),
    ("--source-lang", "data", "source_lang", str, "source file suffix (default de)"),
    ("--target-lang", "data", "target_lang", str, "target file suffix (default en)"),
    ("--train", "data", "train", str, "training pairs: SRC_FILE,TGT_FILE or a TSV"),
    ("--valid", "data", "valid", str, "validation pairs: SRC_FILE,TGT_FILE or a TSV"),
    ("--level", "data", "level", str, "bpe | word (default bpe)"),
    ("--source-vocab-size", "data", "source_vocab_size", int, "source BPE size (8000)"),
    ("--target-vocab-size", "data", "target_vocab_size", int, "target BPE size (8000)"),
    ("--min-count", "data", "min_count", int, "word level: rarer words -> <unk> (2)"),
    ("--max-length", "data", "max_length", int,
     "skip training pairs longer than this many tokens (0: keep all)"),
    ("--batch-size", "data", "batch_size", int, "pairs per batch (default 64)"),
    ("--cell", "model", "cell", str, "rnn | lstm | gru (default gru)"),
    ("--embedding-size", "model", "embedding_size", int, "embedding size (default 256)"),
    ("--hidden", "model", "hidden_size", int, "hidden units (default 256)"),
    ("--encoder-layers", "model", "encoder_layers", int, "encoder layers (default 1)"),
    ("--decoder-layers", "model", "decoder_layers", int, "decoder layers (default 1)"),
    ("--attention", "model", "attention", str, "additive | multiplicative (additive)"),
    ("--input-feeding", "model", "input_feeding", bool,
     "feed the previous attentional vector to the decoder (step-by-step decoder)"),
    ("--dropout", "model", "dropout", float, "dropout (default 0.3)"),
    ("--tie-embeddings", "model", "tie_embeddings", bool,
     "share the decoder's input embedding and output layer"),
    ("--backend", "model", "backend", str, "auto | bptt | native | autograd"),
] + _TRAIN_OPTIONS

_CONDITIONED_LM_OPTIONS = _DATA_SOURCE + [
    ("--condition", "data", "condition", str,
     "label | vector: what the first column of each line is (default label)"),
    ("--level", "data", "level", str, "word | char (default word)"),
    ("--min-count", "data", "min_count", int, "rarer tokens become <unk> (default 1)"),
    ("--batch-size", "data", "batch_size", int, "lines per batch (default 32)"),
    ("--condition-mode", "model", "condition_mode", str,
     "input (every step) | init (the initial state) (default input)"),
    ("--condition-size", "model", "condition_size", int,
     "label embedding size (0: --hidden)"),
    ("--cell", "model", "cell", str, "rnn | lstm | gru (default lstm)"),
    ("--embedding-size", "model", "embedding_size", int, "0: same as --hidden"),
    ("--hidden", "model", "hidden_size", int, "hidden units per layer (default 256)"),
    ("--layers", "model", "num_layers", int, "recurrent layers (default 1)"),
    ("--dropout", "model", "dropout", float, "dropout (default 0.3)"),
    ("--tie-weights", "model", "tie_weights", bool, "share input and output embeddings"),
    ("--backend", "model", "backend", str, "auto | bptt | native | autograd"),
] + _TRAIN_OPTIONS

# task -> (options, training defaults, model defaults, module, data config, train function)
_TASKS = {
    "classifier": (_CLASSIFIER_OPTIONS,
                   {"optimizer": "adam", "lr": 1e-3, "clip": 5.0, "lr_decay": 1.0, "epochs": 10},
                   {}, "classifier", "ClassifierDataConfig", "train_classifier"),
    "tagger": (_TAGGER_OPTIONS,
               {"optimizer": "adam", "lr": 2e-3, "clip": 5.0, "lr_decay": 2.0, "epochs": 20},
               {}, "tagger", "TaggerDataConfig", "train_tagger"),
    "translator": (_TRANSLATOR_OPTIONS,
                   {"optimizer": "adam", "lr": 1e-3, "clip": 1.0, "lr_decay": 2.0,
                    "epochs": 15, "eval_every": 500},
                   {}, "translator", "TranslationDataConfig", "train_translator"),
    "conditioned-lm": (_CONDITIONED_LM_OPTIONS,
                       {"optimizer": "adam", "lr": 2e-3, "clip": 1.0, "lr_decay": 2.0,
                        "epochs": 10},
                       {"hidden_size": 256, "num_layers": 1, "dropout": 0.3,
                        "condition_mode": "input"},
                       "conditioned_lm", "ConditionedLMDataConfig", "train_conditioned_lm"),
}


def _add_options(parser, options) -> None:
    for flag, _, key, kind, text in options:
        if kind is bool:
            parser.add_argument(flag, dest=key, action="store_const", const=True, default=None,
                                help=text)
        else:
            parser.add_argument(flag, dest=key, type=kind, default=None, help=text)


def _read_config(path: str | None, options=None, command: str = "train lm") -> dict:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from None
    # keys: the option names with "_" (hidden, layers, …) or the config names they set
    options = _LM_OPTIONS if options is None else options
    aliases = {flag.lstrip("-").replace("-", "_"): key for flag, _, key, _, _ in options}
    aliases.update({key: key for key in aliases.values()})
    aliases.update({"out": "out", "device": "device", "sample": "sample"})
    unknown = sorted(set(config) - set(aliases))
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}; "
                         f"see 'rnnkit {command} --help'")
    values = {}
    for name, value in config.items():
        key = aliases[name]
        if key == "adaptive_cutoffs" and isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return values


def _lm_settings(args) -> tuple[dict, dict, dict, dict]:
    """Merge level defaults < config file < command line into (data, model, train, run)."""
    from rnnkit.tasks.lm import LEVEL_DEFAULTS

    given = {key: getattr(args, key) for _, _, key, _, _ in _LM_OPTIONS
             if getattr(args, key) is not None}
    file = _read_config(args.config)
    values = {**file, **given}
    level = values.get("level", "char")
    if level not in LEVEL_DEFAULTS:
        raise ValueError(f"level: expected one of {sorted(LEVEL_DEFAULTS)}, got {level!r}")
    values = {"hidden_size": 256, "num_layers": 2, **LEVEL_DEFAULTS[level], **values}
    if not values.get("data"):
        values.setdefault("max_minutes", 4.0)
    groups = {"data": {}, "model": {}, "train": {}}
    for _, group, key, _, _ in _LM_OPTIONS:
        if key in values:
            groups[group][key] = values[key]
    cell_keys = ("nonlinearity", "peephole", "reset_before")
    groups["model"]["cell_options"] = {k: groups["model"].pop(k) for k in cell_keys
                                       if k in groups["model"]}
    run = {"out": args.out or file.get("out"), "device": args.device or file.get("device"),
           "sample": args.sample if args.sample is not None else file.get("sample", 400)}
    return groups["data"], groups["model"], groups["train"], run


def _log_to(args):
    stream = sys.stderr if args.json else sys.stdout
    return lambda text: print(text, file=stream, flush=True)


def _cmd_train_lm(args) -> int:
    from rnnkit.tasks.lm import LMDataConfig, train_lm
    from rnnkit.train import TrainConfig

    data, model, train, run = _lm_settings(args)
    if not run["out"]:              # runs/lm, or runs/lm-2, … if it holds a run already
        run["out"] = "runs/lm"
        k = 2
        while not args.resume and Path(run["out"]).exists() and any(Path(run["out"]).iterdir()):
            run["out"], k = f"runs/lm-{k}", k + 1
        _log_to(args)(f"model directory: {run['out']}")
    if args.no_progress:
        train["progress"] = False
    if args.resume:
        summary = train_lm(None, None, None, run["out"], resume=True,
                           train_overrides=_budget_overrides(args, train), device=run["device"] or "cpu",
                           log=_log_to(args), sample_chars=0 if args.json else run["sample"])
    else:
        summary = train_lm(LMDataConfig(**data), model, TrainConfig(**train), run["out"],
                           device=run["device"] or "cpu",
                           log=_log_to(args), sample_chars=0 if args.json else run["sample"])
    if args.json:
        print(json.dumps(summary, indent=2))
    return 130 if summary["reason"] == "interrupted" else 0


def _task_settings(args, task: str) -> tuple[dict, dict, dict, dict]:
    """Task defaults < config file < command line, as (data, model, train, run)."""
    options, train_defaults, model_defaults = _TASKS[task][:3]
    given = {key: getattr(args, key) for _, _, key, _, _ in options
             if getattr(args, key) is not None}
    file = _read_config(args.config, options, f"train {task}")
    values = {**train_defaults, **model_defaults, **file, **given}
    groups = {"data": {}, "model": {}, "train": {}}
    for _, group, key, _, _ in options:
        if key in values:
            groups[group][key] = values[key]
    if groups["model"].pop("unidirectional", False):
        groups["model"]["bidirectional"] = False
    if args.no_progress:
        groups["train"]["progress"] = False
    run = {"out": args.out or file.get("out"), "device": args.device or file.get("device")}
    if not run["out"]:
        raise ValueError("--out: expected the model directory to write")
    return groups["data"], groups["model"], groups["train"], run


def _budget_overrides(args, train: dict) -> dict:
    """On --resume, the run's own settings, but a new budget if given."""
    budget = {"epochs", "max_steps", "max_minutes", "progress", "tensorboard"}
    return {k: v for k, v in train.items()
            if k in budget and (getattr(args, k, None) is not None or k == "progress")}


def _cmd_train_task(args) -> int:
    import importlib

    from rnnkit.train import TrainConfig

    _, _, _, module, data_cls, train_fn = _TASKS[args.task]
    module = importlib.import_module(f"rnnkit.tasks.{module}")
    data, model, train, run = _task_settings(args, args.task)
    log = _log_to(args)
    if args.resume:
        summary = getattr(module, train_fn)(None, None, None, run["out"], resume=True,
                                            train_overrides=_budget_overrides(args, train),
                                            device=run["device"] or "cpu", log=log)
    else:
        summary = getattr(module, train_fn)(getattr(module, data_cls)(**data), model,
                                            TrainConfig(**train), run["out"],
                                            device=run["device"] or "cpu", log=log)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 130 if summary["reason"] == "interrupted" else 0


def _task_of(directory: str) -> str:
    from rnnkit.checkpoint import read_config

    return read_config(directory).get("task")


def _cmd_eval(args) -> int:
    task = _task_of(args.model)
    if task == "lm":
        from rnnkit.tasks.lm import describe_metrics, evaluate_file

        m = evaluate_file(args.model, args.data, batch_size=args.batch_size, device=args.device)
        text = [f"{args.data}: {describe_metrics(m)}; {m['tokens']:,} tokens predicted",
                f"policy: {m['policy']}"]
    elif task == "classifier":
        from rnnkit.tasks.classifier import describe_metrics, evaluate_file

        m = evaluate_file(args.model, args.data, device=args.device)
        width = max(len(str(x)) for x in m["labels"] + [n for row in m["confusion"]
                                                          for n in row]) + 2
        text = [f"{args.data}: {describe_metrics(m)}; {m['examples']:,} examples",
                "confusion (rows: gold, columns: predicted); F1 per class",
                " " * width + "".join(f"{label:>{width}s}" for label in m["labels"])]
        for label, row, f1 in zip(m["labels"], m["confusion"], m["f1"]):
            text.append(f"{label:>{width}s}" + "".join(f"{n:>{width}d}" for n in row)
                        + f"   F1 {100 * f1:.2f}")
    elif task == "tagger":
        from rnnkit.tasks.tagger import describe_metrics, evaluate_file

        m = evaluate_file(args.model, args.data, device=args.device)
        text = [f"{args.data}: {describe_metrics(m)}; {m['tokens']:,} tokens, "
                f"{m['sentences']:,} sentences ({100 * m['sentence_accuracy']:.1f}% entirely "
                f"right)"]
    elif task == "translator":
        from rnnkit.tasks.translator import describe_metrics, evaluate_file

        if args.beam < 1:
            raise ValueError(f"--beam: expected >= 1, got {args.beam}")
        m = evaluate_file(args.model, args.data, args.reference, beam=args.beam,
                          device=args.device, log=lambda text: print(text, file=sys.stderr))
        text = [f"{args.data}: {describe_metrics(m)}; {m['sentences']:,} sentences, beam "
                f"{args.beam}", f"sacrebleu: {m['signature']}"]
    else:
        raise ValueError(f"{args.model}: 'rnnkit eval' does not evaluate {task!r} models")
    print(json.dumps(m, indent=2) if args.json else "\n".join(text))
    return 0


def _cmd_predict(args) -> int:
    task = _task_of(args.model)
    if task == "classifier":
        from rnnkit.tasks.classifier import predict_file

        rows = predict_file(args.model, args.file, device=args.device)
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
            return 0
        labels = list(rows[0]["probabilities"])
        print("line\tlabel\t" + "\t".join(f"p({label})" for label in labels) + "\ttext")
        for r in rows:
            probs = "\t".join(f"{r['probabilities'][label]:.4f}" for label in labels)
            print(f"{r['line']}\t{r['label']}\t{probs}\t{r['text']}")
    elif task == "tagger":
        from rnnkit.tasks.tagger import predict_file

        text = predict_file(args.model, args.file, args.out, device=args.device)
        if text is not None:
            print(text, end="")
        else:
            print(f"wrote {args.out}", file=sys.stderr)
    else:
        raise ValueError(f"{args.model}: 'rnnkit predict' is for classifier and tagger "
                         f"models, this is a {task!r} model"
                         + ("; use 'rnnkit translate'" if task == "translator" else ""))
    return 0


def _cmd_translate(args) -> int:
    from rnnkit.data.labelled import read_sentences
    from rnnkit.tasks.translator import plot_attention, translate_lines

    if args.beam < 1:
        raise ValueError(f"--beam: expected >= 1, got {args.beam}")
    lines = read_sentences(args.file)
    if args.attention and not 1 <= args.sentence <= len(lines):
        raise ValueError(f"--sentence: expected a line number in 1..{len(lines)}, "
                         f"got {args.sentence}")
    out = translate_lines(args.model, lines, beam=args.beam,
                          length_penalty=args.length_penalty, device=args.device,
                          log=lambda text: print(text, file=sys.stderr))
    if args.out:
        from rnnkit.checkpoint import atomic_write

        atomic_write(args.out, lambda tmp: Path(tmp).write_text(
            "".join(t + "\n" for t in out), encoding="utf-8"))
    if args.json:
        print(json.dumps([{"line": k + 1, "source": s, "translation": t}
                          for k, (s, t) in enumerate(zip(lines, out))], indent=2,
                         ensure_ascii=False))
    elif not args.out:
        print("\n".join(out))
    if args.attention:
        text = plot_attention(args.model, lines[args.sentence - 1], args.attention,
                              device=args.device)
        print(f"attention of line {args.sentence} (greedy: {text!r}): {args.attention}",
              file=sys.stderr)
    return 0


def _cmd_score(args) -> int:
    from rnnkit.tasks.lm import score_lines

    rows = score_lines(args.model, args.file, device=args.device)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    print("line\tlogprob\tlog10prob\ttokens\tppl\ttext")
    for r in rows:
        print(f"{r['line']}\t{r['logprob']:.4f}\t{r['log10prob']:.4f}\t{r['tokens']}\t"
              f"{r['ppl']:.3f}\t{r['text']}")
    return 0


def _cmd_generate(args) -> int:
    from rnnkit.tasks.lm import generate

    if args.length < 0:
        raise ValueError(f"--length: expected >= 0, got {args.length}")
    stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
    if stream is not None:
        print(args.prime, end="", flush=True)
    if args.beam < 0:
        raise ValueError(f"--beam: expected >= 0, got {args.beam}")
    options = dict(max_tokens=args.length, on_text=stream, beam=args.beam, device=args.device,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   greedy=args.greedy, seed=args.seed)
    if _task_of(args.model) == "conditioned_lm":
        from rnnkit.tasks.conditioned_lm import generate as generate_conditioned

        if args.condition is None:
            raise ValueError(f"--condition: {args.model} is a conditioned model; give a "
                             f"label or a vector")
        text = generate_conditioned(args.model, args.condition, args.prime,
                                    stop=args.stop or ("\n",), **options)
    else:
        if args.condition is not None:
            raise ValueError(f"--condition: {args.model} is not a conditioned model")
        text = generate(args.model, args.prime, stop=args.stop or (), **options)
    if args.json:
        print(json.dumps({"prime": args.prime, "text": text}, ensure_ascii=False))
    else:
        print()
    return 0


def _cmd_diagnose(args) -> int:
    from rnnkit.data import iter_lines
    from rnnkit.diagnostics import (gate_statistics, gradient_flow, plot_gate_statistics,
                                    plot_gradient_flow, recurrent_matrix_statistics)
    from rnnkit.tasks.lm import load_lm

    if args.length < 2:
        raise ValueError(f"--length: expected >= 2, got {args.length}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected >= 1, got {args.batch_size}")
    model, tokenizer, _ = load_lm(args.model)
    ids = []
    for line in iter_lines(args.data):
        ids.extend(tokenizer.encode_line(line))
        if len(ids) >= (args.length + 1) * args.batch_size:
            break
    T = min(args.length, len(ids) // args.batch_size - 1)
    if T < 2:
        raise ValueError(f"{args.data}: too little text for {args.batch_size} streams")
    import torch

    data = torch.tensor(ids[:(T + 1) * args.batch_size]).view(args.batch_size, T + 1).t()
    inputs, targets = data[:-1], data[1:]
    model.eval()

    def loss():                      # the loss of the last step only: what reaches t < T?
        hidden, _ = model(inputs)
        return model.nll(hidden[-1:], targets[-1:]).mean()

    flows = gradient_flow(model, loss)
    plot_gradient_flow({f"{model.config.cell} layer {f.index}": [f] for f in flows}, args.out,
                       title=f"{args.model}: ‖∂L_T/∂h_t‖, loss at the last of {T} steps")
    gates = gate_statistics(model, lambda: model(inputs))
    gates_png = str(Path(args.out).with_name(Path(args.out).stem + "-gates.png"))
    if gates:
        plot_gate_statistics(gates, gates_png, title=f"{args.model}: gate saturation")
    matrices = recurrent_matrix_statistics(model)
    if args.json:
        print(json.dumps({"steps": T, "layers": [f.as_dict() for f in flows],
                          "gates": [g.__dict__ for g in gates],
                          "recurrent_matrices": [m.__dict__ for m in matrices],
                          "plots": [args.out] + ([gates_png] if gates else [])}, indent=2))
        return 0
    print(f"gradient of the last step's loss w.r.t. the hidden state, {T} steps back "
          f"({args.batch_size} streams of {args.data}); plot: {args.out}")
    print(f"{'layer':>5s} {'t=T-1':>10s} {'t=T/2':>10s} {'t=0':>10s} {'ratio 0/(T-1)':>14s}")
    for f in flows:
        print(f"{f.index:5d} {f.h[-1]:10.2e} {f.h[T // 2]:10.2e} {f.h[0]:10.2e} "
              f"{f.h[0] / f.h[-1] if f.h[-1] else float('nan'):14.2e}")
    if gates:
        print(f"\ngate activations (plot: {gates_png})")
        print(f"{'layer':>5s} {'gate':8s} {'mean':>6s} {'< 0.1':>7s} {'> 0.9':>7s}")
        for g in gates:
            print(f"{g.index:5d} {g.gate:8s} {g.mean:6.3f} {g.near_zero:7.1%} {g.near_one:7.1%}")
    print("\nrecurrent matrices, per gate block")
    print(f"{'parameter':24s} {'gate':10s} {'spectral radius':>15s} {'max singular':>13s}")
    for m in matrices:
        print(f"{m.parameter:24s} {m.gate:10s} {m.spectral_radius:15.3f} "
              f"{m.largest_singular_value:13.3f}")
    return 0


def _cmd_activations(args) -> int:
    from rnnkit.data import iter_lines
    from rnnkit.diagnostics.activations import MAX_CHARS, write_activation_page
    from rnnkit.tasks.lm import load_lm

    model, tokenizer, _ = load_lm(args.model)
    text = "\n".join(iter_lines(args.text)) + "\n"
    shown = write_activation_page(model, tokenizer, text, args.out, unit=args.unit,
                                  layer=args.layer, kind=args.kind,
                                  max_chars=args.max_chars or MAX_CHARS)
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    if shown["truncated"]:
        print(f"note: {shown['note']}")
    print(f"wrote {args.out}: {args.kind} unit {args.unit}, {shown['chars']:,} characters, "
          f"values {shown['range'][0]:.2f} .. {shown['range'][1]:.2f}")
    for feature, units in shown["correlations"].items():
        print(f"  {feature:18s} " + ", ".join(f"unit {u} (r={r:+.2f})" for u, r in units))
    return 0


def _parse_list(text: str, name: str, kind=str) -> list:
    try:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected a comma-separated list, got {text!r}") from None
    if not items:
        raise ValueError(f"{name}: expected a comma-separated list, got {text!r}")
    return items


def _cmd_bench_memory(args) -> int:
    from rnnkit.cells import make_cell
    from rnnkit.diagnostics.memory import TASKS, plot_memory_results, train_memory_task

    if args.task not in TASKS:
        raise ValueError(f"--task: expected one of {list(TASKS)}, got {args.task!r}")
    lengths = _parse_list(args.length, "--length", int)
    if min(lengths) < 2:
        raise ValueError(f"--length: expected lengths >= 2, got {args.length!r}")
    cells = _parse_list(args.cells, "--cells")
    for cell in cells:
        make_cell(cell)             # an unknown name lists the registered ones
    if args.steps < 1:
        raise ValueError(f"--steps: expected >= 1, got {args.steps}")
    results = []
    for length in lengths:
        for cell in cells:
            r = train_memory_task(args.task, length, cell, steps=args.steps, seed=args.seed,
                                  hidden=args.hidden)
            results.append(r)
            if not args.json:
                print(f"{r.task:7s} T={r.length:<4d} {r.cell:5s} {r.metric} {r.value:.4f} "
                      f"(baseline {r.baseline:.4f}) {'solved' if r.solved else '-'} "
                      f"[{r.steps} steps, {r.seconds:.0f} s]", flush=True)
    if args.out:
        plot_memory_results(results, args.out)
    if args.json:
        print(json.dumps([{**r.__dict__, "solved": r.solved} for r in results], indent=2))
    return 0


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

    train = commands.add_parser("train", help="train a model",
                                description="Train a model of a task into a directory.")
    tasks = train.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True
    lm = tasks.add_parser(
        "lm", help="a recurrent language model",
        description="Train a recurrent language model. With no --data, trains a small "
        "character LSTM on Python's own standard-library source for 4 minutes and prints a "
        "sample. Options may also come from a TOML file (--config); the command line wins. "
        "Training defaults by --level: char: adam, lr 0.002, clip 1, lr-decay 2, bptt 100, "
        "batch 32; word/bpe: sgd, lr 20, clip 0.25, lr-decay 4, bptt 35, batch 20; "
        "10 epochs.")
    lm.add_argument("--out", help="model directory to write (default: runs/lm, or runs/lm-2, "
                    "… when that holds a run)")
    lm.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its last checkpoint")
    lm.add_argument("--config", help="TOML file of options (keys as in --help, with _)")
    lm.add_argument("--device", help="cpu | cuda | auto (default cpu)")
    lm.add_argument("--sample", type=int, help="tokens of sample text printed at the end "
                    "(default 400; 0: none)")
    lm.add_argument("--no-progress", action="store_true", help="no progress bar")
    lm.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_options(lm, _LM_OPTIONS)
    lm.set_defaults(run=_cmd_train_lm)

    descriptions = {
        "classifier": ("a sequence classifier (many-to-one)",
                       "Train a classifier of 'label<TAB>text' lines: embedding, "
                       "bidirectional recurrent stack, pooling, classes."),
        "tagger": ("a sequence tagger (many-to-many aligned)",
                   "Train a tagger of CoNLL-U (UPOS or XPOS) or 'word<TAB>tag' files: word "
                   "embedding + character encoding, bidirectional recurrent stack."),
        "translator": ("an encoder-decoder with attention (translation)",
                       "Train a translator of aligned sentence pairs: bidirectional encoder, "
                       "attentional decoder, teacher forcing."),
        "conditioned-lm": ("a language model conditioned on a label or vector (one-to-many)",
                           "Train a sentence model of 'condition<TAB>text' lines; then "
                           "'rnnkit generate DIR --condition LABEL'."),
    }
    for name, (short, long) in descriptions.items():
        options, train_defaults, model_defaults = _TASKS[name][:3]
        defaults = ", ".join(f"{k.replace('_', '-')} {v}"
                             for k, v in {**train_defaults, **model_defaults}.items())
        sub = tasks.add_parser(name, help=short, description=f"{long} Defaults: {defaults}. "
                               "Options may also come from a TOML file (--config); the "
                               "command line wins.")
        sub.add_argument("--out", help="model directory to write (required)")
        sub.add_argument("--resume", action="store_true",
                         help="continue the run in --out from its last checkpoint")
        sub.add_argument("--config", help="TOML file of options (keys as in --help, with _)")
        sub.add_argument("--device", help="cpu | cuda | auto (default cpu)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        sub.add_argument("--json", action="store_true", help="print the summary as JSON")
        _add_options(sub, options)
        sub.set_defaults(run=_cmd_train_task)

    ev = commands.add_parser("eval", help="evaluate a model on a file",
                             description="Evaluate a trained model on a file of its task: "
                             "perplexity (language model), accuracy, macro-F1 and confusion "
                             "matrix (classifier), token and unseen-word accuracy (tagger), "
                             "BLEU and chrF (translator).")
    ev.add_argument("model", metavar="DIR", help="model directory")
    ev.add_argument("--data", required=True, metavar="FILE",
                    help="text (lm), label<TAB>text (classifier), CoNLL-U or word<TAB>tag "
                    "(tagger), source file or TSV of pairs (translator)")
    ev.add_argument("--reference", metavar="FILE",
                    help="translator: the reference translations of --data, line by line "
                    "(without it, --data must be a TSV of source<TAB>target pairs)")
    ev.add_argument("--beam", type=int, default=5, help="translator: beam width (5; 1 greedy)")
    ev.add_argument("--batch-size", type=int, default=10, help="lm: parallel streams (10)")
    ev.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ev.add_argument("--json", action="store_true", help="print the figures as JSON")
    ev.set_defaults(run=_cmd_eval)

    sc = commands.add_parser("score", help="log-probability of every line of a file",
                             description="Score each line of FILE on its own: natural-log "
                             "and log10 probability, token count and perplexity, as TSV.")
    sc.add_argument("model", metavar="DIR", help="model directory")
    sc.add_argument("file", metavar="FILE", help="UTF-8 text file, one sentence per line")
    sc.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    sc.add_argument("--json", action="store_true", help="JSON instead of TSV")
    sc.set_defaults(run=_cmd_score)

    gen = commands.add_parser("generate", help="continue a prompt with a trained model",
                              description="Generate text, streamed as it is produced.")
    gen.add_argument("model", metavar="DIR", help="model directory")
    gen.add_argument("--prime", default="", help="prompt text (default: start of a line)")
    gen.add_argument("--length", type=int, default=200, help="tokens to generate (200)")
    gen.add_argument("--temperature", type=float, default=1.0, help="> 0 (default 1)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    gen.add_argument("--greedy", action="store_true", help="always the likeliest token")
    gen.add_argument("--beam", type=int, default=0,
                     help="beam search of this width instead of sampling (0: off)")
    gen.add_argument("--stop", action="append", help="stop at this string (repeatable)")
    gen.add_argument("--seed", type=int, default=None, help="random seed")
    gen.add_argument("--condition", help="conditioned model: a label, or numbers '0.5,1,…'")
    gen.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    gen.add_argument("--json", action="store_true", help="print prompt and text as JSON")
    gen.set_defaults(run=_cmd_generate)

    pr = commands.add_parser(
        "predict", help="label lines (classifier) or tag sentences (tagger)",
        description="Classifier: print the label and class probabilities of every line of "
        "FILE (text, or label<TAB>text) as TSV (or --json). Tagger: write the sentences of "
        "FILE back in their own format (CoNLL-U or word<TAB>tag) with the predicted tags.")
    pr.add_argument("model", metavar="DIR", help="model directory")
    pr.add_argument("file", metavar="FILE", help="input file")
    pr.add_argument("--out", metavar="FILE", help="tagger: write here instead of stdout")
    pr.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    pr.add_argument("--json", action="store_true", help="classifier: JSON instead of TSV")
    pr.set_defaults(run=_cmd_predict)

    tr = commands.add_parser(
        "translate", help="translate the sentences of a file",
        description="Translate FILE (one sentence per line) with beam search (or greedy "
        "with --beam 1) and print one translation per line.")
    tr.add_argument("model", metavar="DIR", help="translator model directory")
    tr.add_argument("file", metavar="FILE", help="UTF-8 text, one sentence per line")
    tr.add_argument("--beam", type=int, default=5, help="beam width (default 5; 1: greedy)")
    tr.add_argument("--length-penalty", type=float, default=1.0,
                    help="hypothesis score = log p / length ** this (default 1)")
    tr.add_argument("--out", metavar="FILE", help="write the translations here")
    tr.add_argument("--attention", metavar="PNG",
                    help="also draw the attention matrix of one sentence (see --sentence)")
    tr.add_argument("--sentence", type=int, default=1, help="line of FILE to draw (1)")
    tr.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    tr.add_argument("--json", action="store_true", help="print JSON")
    tr.set_defaults(run=_cmd_translate)

    diag = commands.add_parser(
        "diagnose", help="gradient flow through time of a trained model",
        description="Plot the norm of dL/dh_t for every step t and layer, for a loss at "
        "the last step of a window of FILE, read from the hand BPTT engine.")
    diag.add_argument("model", metavar="DIR", help="model directory")
    diag.add_argument("--data", required=True, metavar="FILE", help="UTF-8 text file")
    diag.add_argument("--out", required=True, metavar="PNG", help="plot file to write")
    diag.add_argument("--length", type=int, default=100, help="time steps (100)")
    diag.add_argument("--batch-size", type=int, default=8, help="streams averaged (8)")
    diag.add_argument("--json", action="store_true", help="print the norms as JSON")
    diag.set_defaults(run=_cmd_diagnose)

    act = commands.add_parser(
        "activations", help="colour a text by one hidden unit of a character model",
        description="Write an offline HTML page that colours each character of a text by "
        "the activation of one unit (or gate), and list the units most correlated with the "
        "position in the line and with being inside quotes or brackets.")
    act.add_argument("model", metavar="DIR", help="character-level model directory")
    act.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file")
    act.add_argument("--out", required=True, metavar="HTML", help="page to write")
    act.add_argument("--unit", type=int, default=0, help="unit index (default 0)")
    act.add_argument("--layer", type=int, default=-1, help="layer index (default: last)")
    act.add_argument("--kind", default="hidden",
                     help="hidden | cell | input | forget | output | reset | update")
    act.add_argument("--max-chars", type=int, default=0,
                     help="longest text shown (default 20000); longer texts are cut, and "
                     "the page says so")
    act.add_argument("--json", action="store_true", help="print the figures as JSON")
    act.set_defaults(run=_cmd_activations)

    bench = commands.add_parser("bench", help="built-in experiments",
                                description="Built-in experiments.")
    experiments = bench.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    experiments.required = True
    memory = experiments.add_parser(
        "memory", help="long-range memory tasks: where a plain RNN fails",
        description="Train each cell on a long-range memory task generated from a seed, "
        "for a fixed number of steps, and report the test figure against the baseline.")
    memory.add_argument("--task", default="adding", help="adding | copy | reber")
    memory.add_argument("--length", default="50,100,200", help="comma-separated lengths")
    memory.add_argument("--cells", default="rnn,lstm,gru,irnn",
                        help="comma-separated: rnn (tanh), lstm, gru, irnn (ReLU, identity)")
    memory.add_argument("--steps", type=int, default=1000, help="Adam steps per model")
    memory.add_argument("--hidden", type=int, default=128, help="hidden units (128)")
    memory.add_argument("--seed", type=int, default=0, help="random seed")
    memory.add_argument("--out", metavar="PNG", help="also plot the table")
    memory.add_argument("--json", action="store_true", help="print the results as JSON")
    memory.set_defaults(run=_cmd_bench_memory)
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

"""Using a trained model: ``eval``, ``predict`` (dispatched to the model's task declaration),
``score``, ``generate`` and ``translate``."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from rnnkit.cli.parsing import device_and_json, model_command
from rnnkit.files import strict_json


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def _task_of(directory: str):
    """(task name, its declaration or None) of a model directory."""
    from rnnkit.checkpoint import read_config
    from rnnkit.tasks import TASKS

    task = read_config(directory).get("task")
    return task, TASKS.get(task)


def _elsewhere(spec) -> str:
    return f"; use '{spec.use}'" if spec is not None and spec.use else ""


def run_eval(args) -> int:
    task, spec = _task_of(args.model)
    if spec is None or spec.evaluate is None:
        raise ValueError(f"{args.model}: 'rnnkit eval' does not evaluate {task!r} models"
                         + _elsewhere(spec))
    if args.beam is not None and args.beam < 1:
        raise ValueError(f"--beam: expected >= 1, got {args.beam}")
    for flag, given, takers in (("--int8", args.int8, ("lm",)),
                                ("--dynamic", args.dynamic, ("lm",)),
                                ("--ngram", args.ngram, ("lm", "recognizer"))):
        if given and task not in takers:
            raise ValueError(f"{flag}: for {' and '.join(takers)} models; {args.model} is a "
                             f"{task!r} model")
    beam = {} if args.beam is None else {"beam": args.beam}     # else the task's own default
    m = spec.evaluate(args.model, args.data, reference=args.reference, **beam,
                      batch_size=args.batch_size, device=args.device, log=_stderr,
                      int8=args.int8, dynamic=args.dynamic or 0.0, ngram=args.ngram,
                      ngram_weight=_ngram_weight(args))
    print(strict_json(m, indent=2) if args.json else "\n".join(spec.report(m, args.data)))
    return 0


def run_predict(args) -> int:
    from rnnkit.tasks import TASKS

    task, spec = _task_of(args.model)
    if spec is None or spec.predict is None:
        names = " and ".join(name for name, s in TASKS.items() if s.predict is not None)
        raise ValueError(f"{args.model}: 'rnnkit predict' is for {names} models, this is a "
                         f"{task!r} model" + _elsewhere(spec))
    text = spec.predict(args.model, args.file, out=args.out, device=args.device,
                        json=args.json)
    if text is None:
        _stderr(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def run_translate(args) -> int:
    from rnnkit.data.labelled import read_sentences
    from rnnkit.tasks.translator import plot_attention, translate_lines

    if args.beam < 1:
        raise ValueError(f"--beam: expected >= 1, got {args.beam}")
    lines = read_sentences(args.file)
    if args.attention and not 1 <= args.sentence <= len(lines):
        raise ValueError(f"--sentence: expected a line number in 1..{len(lines)}, "
                         f"got {args.sentence}")
    out = translate_lines(args.model, lines, beam=args.beam, path=args.file,
                          length_penalty=args.length_penalty, device=args.device, log=_stderr)
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
        _stderr(f"attention of line {args.sentence} (greedy: {text!r}): {args.attention}")
    return 0


def _ngram_weight(args) -> float:
    """--ngram-weight (only with --ngram), or the default share."""
    from rnnkit.ngram import DEFAULT_WEIGHT

    if args.ngram_weight is not None and not args.ngram:
        raise ValueError("--ngram-weight: only with --ngram FILE")
    return DEFAULT_WEIGHT if args.ngram_weight is None else args.ngram_weight


def _add_ngram(parser) -> None:
    from rnnkit.ngram import DEFAULT_WEIGHT

    parser.add_argument("--ngram", metavar="FILE", help="lm: interpolate each token's "
                        "probability with an n-gram model (ARPA or KenLM binary; word-level "
                        "models; needs the kenlm module; eval reads the text as one stream)")
    parser.add_argument("--ngram-weight", type=float, metavar="λ",
                        help=f"the n-gram's share of each token's probability, in [0, 1] "
                        f"({DEFAULT_WEIGHT})")


def run_score(args) -> int:
    """Print each line's score as it is computed (TSV, or one strict JSON array)."""
    from rnnkit.tasks.lm import iter_scores

    rows = iter_scores(args.model, args.file, device=args.device, int8=args.int8,
                       log=_stderr, ngram=args.ngram, ngram_weight=_ngram_weight(args))
    if args.json:
        opened = False
        for r in rows:
            print(",\n" if opened else "[\n", end="")
            print(textwrap.indent(strict_json(r, indent=2, ensure_ascii=False), "  "), end="")
            opened = True
        print("\n]")
        return 0
    print("line\tlogprob\tlog10prob\ttokens\tppl\ttext")
    for r in rows:
        print(f"{r['line']}\t{r['logprob']:.4f}\t{r['log10prob']:.4f}\t{r['tokens']}\t"
              f"{r['ppl']:.3f}\t{r['text']}")
    return 0


def run_rescore(args) -> int:
    from rnnkit.checkpoint import atomic_write
    from rnnkit.tasks import rescore

    rescore.check_weights(args.lm_weight, args.rnn_weight)
    if args.tune and args.context == "carry":
        raise ValueError("--tune: searches the weights on scores from a fresh state; use it "
                         "with --context reset")
    lm_weight, rnn_weight = args.lm_weight, args.rnn_weight
    if args.tune:
        dev, ref = args.tune
        tuned = rescore.tune(rescore.score_nbest(args.model, rescore.read_nbest(
            dev, args.format), device=args.device), rescore.read_references(ref), ref)
        lm_weight, rnn_weight = tuned["lm_weight"], tuned["rnn_weight"]
        _stderr(f"tuned on {dev}: --lm-weight {lm_weight:g} --rnn-weight {rnn_weight:g} "
                f"(WER {100 * tuned['wer']:.2f}%)")
    lists = rescore.score_nbest(args.model, rescore.read_nbest(args.nbest, args.format),
                                context=args.context, lm_weight=lm_weight,
                                rnn_weight=rnn_weight, device=args.device)
    best = rescore.one_best(lists, lm_weight, rnn_weight)
    if args.reference:
        refs = rescore.read_references(args.reference)
        first = [(n.id, n.hypotheses[0].text) for n in lists]
        was, now = (rescore.word_error_rate(b, refs, args.reference) for b in (first, best))
        _stderr(f"WER against {args.reference}: {100 * was:.2f}% for the lists' first "
                f"hypotheses, {100 * now:.2f}% rescored")
    for path, lines in ((args.out, rescore.rescored_lines(lists, lm_weight, rnn_weight)),
                        (args.one_best, [f"{key} {text}" for key, text in best])):
        if path:
            atomic_write(path, lambda tmp, lines=lines: Path(tmp).write_text(
                "".join(line + "\n" for line in lines), encoding="utf-8"))
            _stderr(f"wrote {path}")
    if args.json:
        print(json.dumps([{"id": key, "text": text} for key, text in best], indent=2,
                         ensure_ascii=False))
    elif not args.one_best:
        print("\n".join(f"{key} {text}" for key, text in best))
    return 0


def run_card(args) -> int:
    from rnnkit.card import write_card

    _stderr(f"wrote {write_card(args.model)}")
    return 0


def _check_decoding(args) -> None:
    """The sampling options only when sampling: not with --greedy or --beam; and not both
    --greedy and --beam."""
    if args.greedy and args.beam:
        raise ValueError("--greedy: not with --beam (beam search of width 1 is greedy)")
    mode = "--greedy" if args.greedy else "--beam" if args.beam else None
    if mode is None:
        return
    for flag, value in (("--temperature", args.temperature), ("--top-k", args.top_k),
                        ("--top-p", args.top_p)):
        if value is not None:
            raise ValueError(f"{flag}: a sampling option, not used with {mode} (drop one "
                             f"of them)")


def run_generate(args) -> int:
    from rnnkit.tasks import conditioned_lm, lm

    if args.length < 0:
        raise ValueError(f"--length: expected >= 0, got {args.length}")
    if args.beam < 0:
        raise ValueError(f"--beam: expected >= 0, got {args.beam}")
    _check_decoding(args)
    stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
    temperature = 1.0 if args.temperature is None else args.temperature
    options = dict(max_tokens=args.length, on_text=stream, beam=args.beam, device=args.device,
                   temperature=temperature, top_k=args.top_k, top_p=args.top_p,
                   greedy=args.greedy, seed=args.seed, int8=args.int8, log=_stderr)
    conditioned = _task_of(args.model)[0] == conditioned_lm.TASK
    if conditioned and args.condition is None:
        raise ValueError(f"--condition: {args.model} is a conditioned model; give a label or "
                         f"a vector")
    if not conditioned and args.condition is not None:
        raise ValueError(f"--condition: {args.model} is not a conditioned model")
    if stream is not None:
        print(args.prime, end="", flush=True)
    if conditioned:
        text = conditioned_lm.generate(args.model, args.condition, args.prime,
                                       stop=args.stop or ("\n",), **options)
    else:
        text = lm.generate(args.model, args.prime, stop=args.stop or (), **options)
    print(json.dumps({"prime": args.prime, "text": text}, ensure_ascii=False)
          if args.json else "")
    return 0


INT8_HELP = ("int8 dynamic quantisation (PyTorch's, CPU): the output layer, and the "
             "recurrent layers of LSTM and GRU models; prints what was quantised")


def add_commands(commands) -> None:
    """The parsers of eval, score, generate, predict and translate."""
    ev = model_command(
        commands, "eval", "evaluate a model on a file", "Evaluate a trained model on a file "
        "of its task: perplexity (language model), accuracy, macro-F1 and confusion matrix "
        "(classifier), token and unseen-word accuracy (tagger), BLEU and chrF (translator), "
        "WER and CER (recognizer), BLEU (captioner).",
        run_eval)
    ev.add_argument("--data", required=True, metavar="FILE",
                    help="text (lm), label<TAB>text (classifier), CoNLL-U or word<TAB>tag "
                    "(tagger), source file or TSV of pairs (translator), audio<TAB>transcript "
                    "TSV (recognizer), image<TAB>caption TSV (captioner)")
    ev.add_argument("--reference", metavar="FILE",
                    help="translator: the reference translations of --data, line by line "
                    "(without it, --data must be a TSV of source<TAB>target pairs)")
    ev.add_argument("--beam", type=int, help="translator, captioner: beam width (default 5; "
                    "1 greedy); recognizer: 1 greedy (default), or beam search by pyctcdecode")
    ev.add_argument("--batch-size", type=int, default=10, help="lm: parallel streams (10)")
    _add_ngram(ev)
    ev.add_argument("--dynamic", type=float, metavar="LR", help="lm: dynamic evaluation — "
                    "a copy of the model takes one SGD step of this rate after each window "
                    "it has scored (files untouched; --batch-size 1 adapts to the text in "
                    "order)")
    ev.add_argument("--int8", action="store_true", help="lm: evaluate the int8 model and "
                    "print the float model's perplexity beside it (" + INT8_HELP + ")")
    device_and_json(ev, "print the figures as strict JSON (a figure that is not "
                    "finite, such as an overflowed perplexity, is the string \"inf\", "
                    "\"-inf\" or \"nan\")")

    sc = model_command(commands, "score", "log-probability of every line of a file",
                       "Score each line of FILE on its own: natural-log and log10 "
                       "probability, token count and perplexity, as TSV.", run_score)
    sc.add_argument("file", metavar="FILE", help="UTF-8 text file, one sentence per line")
    sc.add_argument("--int8", action="store_true", help=INT8_HELP)
    _add_ngram(sc)
    device_and_json(sc, "strict JSON instead of TSV (a figure that is not finite is "
                    "the string \"inf\", \"-inf\" or \"nan\")")

    pr = model_command(
        commands, "predict", "label lines (classifier) or tag sentences (tagger)",
        "Classifier: print the label and class probabilities of every line of FILE (text, "
        "or label<TAB>text) as TSV (or --json). Tagger: write the sentences of FILE back in "
        "their own format (CoNLL-U or word<TAB>tag) with the predicted tags.", run_predict)
    pr.add_argument("file", metavar="FILE", help="input file")
    pr.add_argument("--out", metavar="FILE", help="tagger: write here instead of stdout")
    device_and_json(pr, "classifier: JSON instead of TSV")
    _add_generate(commands)
    _add_translate(commands)
    _add_rescore(commands)
    model_command(commands, "card", "write a model directory's model card (README.md)",
                  "Write DIR/README.md: a Hugging Face-style model card (YAML front matter "
                  "with library_name rnnkit, tags, datasets and the validation figures of the "
                  "model kept; the architecture, the training command, how to use it). "
                  "Training writes it when a run ends; this writes it for older "
                  "directories.", run_card)


def _add_generate(commands) -> None:
    gen = model_command(commands, "generate", "continue a prompt with a trained model",
                        "Generate text, streamed as it is produced.", run_generate)
    gen.add_argument("--prime", default="", help="prompt text (default: start of a line)")
    gen.add_argument("--length", type=int, default=200, help="tokens to generate (200)")
    gen.add_argument("--temperature", type=float, default=None,
                     help="sampling: > 0 (default 1)")
    gen.add_argument("--top-k", type=int, default=None, help="sampling: among the k likeliest")
    gen.add_argument("--top-p", type=float, default=None, help="sampling: nucleus, in (0, 1]")
    gen.add_argument("--greedy", action="store_true", help="always the likeliest token")
    gen.add_argument("--beam", type=int, default=0,
                     help="beam search of this width instead of sampling (0: off)")
    gen.add_argument("--stop", action="append", help="stop at this string (repeatable)")
    gen.add_argument("--seed", type=int, default=None, help="random seed")
    gen.add_argument("--condition", help="conditioned model: a label, or numbers '0.5,1,…'")
    gen.add_argument("--int8", action="store_true", help=INT8_HELP)
    device_and_json(gen, "print prompt and text as JSON")


def _add_translate(commands) -> None:
    tr = model_command(commands, "translate", "translate the sentences of a file",
                       "Translate FILE (one sentence per line) with beam search (or greedy "
                       "with --beam 1) and print one translation per line.", run_translate,
                       model_help="translator model directory")
    tr.add_argument("file", metavar="FILE", help="UTF-8 text, one sentence per line")
    tr.add_argument("--beam", type=int, default=5, help="beam width (default 5; 1: greedy)")
    tr.add_argument("--length-penalty", type=float, default=1.0,
                    help="hypothesis score = log p / length ** this (default 1)")
    tr.add_argument("--out", metavar="FILE", help="write the translations here")
    tr.add_argument("--attention", metavar="PNG",
                    help="also draw the attention matrix of one sentence (see --sentence)")
    tr.add_argument("--sentence", type=int, default=1, help="line of FILE to draw (1)")
    device_and_json(tr, "print JSON")


def _add_rescore(commands) -> None:
    from rnnkit.tasks.rescore import CONTEXTS, FORMATS

    rs = model_command(
        commands, "rescore", "rescore n-best lists with a language model",
        "Score every hypothesis of NBEST with the language model DIR, combine with the "
        "list's own scores (combined = score + lm-weight x (rnn-weight x rnnkit + (1 - "
        "rnn-weight) x lm_score), all log10) and print each utterance's new 1-best as 'ID "
        "text'. Formats: the RNNLM toolkit's '-nbest' lines 'ID words', TSV "
        "'ID<TAB>score<TAB>lm_score<TAB>hypothesis', Kaldi's 'UTTID-N words'.", run_rescore,
        model_help="language model directory")
    rs.add_argument("nbest", metavar="NBEST", help="n-best file")
    rs.add_argument("--format", choices=FORMATS, default="auto", help="NBEST's format (auto)")
    rs.add_argument("--context", choices=CONTEXTS, default="reset",
                    help="reset: each hypothesis from a fresh state; carry: from the state "
                    "after the previous utterance's new 1-best")
    rs.add_argument("--lm-weight", type=float, default=1.0,
                    help="weight of the language-model score against the list's score (1)")
    rs.add_argument("--rnn-weight", type=float, default=1.0,
                    help="share of rnnkit's log-probability in the language-model score, "
                    "the rest the list's lm_score (1: rnnkit's alone)")
    rs.add_argument("--tune", nargs=2, metavar=("DEV", "REF"),
                    help="search --lm-weight and --rnn-weight for the least WER on the n-best "
                    "file DEV against references REF ('ID text' lines), then use them")
    rs.add_argument("--reference", metavar="REF",
                    help="references of NBEST ('ID text'): print the WER before and after")
    rs.add_argument("--out", metavar="FILE", help="write the rescored lists (TSV: ID, rank, "
                    "combined, rnnkit, score, lm_score, hypothesis; best first)")
    rs.add_argument("--one-best", metavar="FILE", help="write the 1-best here, not stdout")
    device_and_json(rs, "print the 1-best as JSON")

"""CTC speech recognition on the espeak-ng corpus of ``benchmarks/speech_data.py`` (made
here if absent): train ``rnnkit train recognizer`` for a few minutes on one thread, then
report WER and CER on the test split — voices (accents and voice variants) and a speaking
rate never heard in training — greedy, by beam search (pyctcdecode, if installed), and by
beam search with DATA/lm.arpa, a word bigram model (kenlm), its weight and word bonus
tuned on the dev split.

    python benchmarks/speech.py                          # digits, 8 minutes, 1 thread
    python benchmarks/speech.py --data runs/speech-ptb --text ptb --minutes 10 \
        --out runs/bench-speech-ptb --name speech-ptb    # PTB sentences of <= 10 words

Writes benchmarks/results/NAME.json (speech.json) and prints the figures and the command
that trained the model. Exits 0 with "skipped: …" where espeak-ng or sox is absent.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, ROOT, write_results, replace_folder


def by_voice(recognizer, out: Path, data: Path) -> dict:
    """Greedy test WER and CER per voice (DATA/voices/test.tsv)."""
    rows = [line.split("\t") for line in
            (data / "voices" / "test.tsv").read_text().splitlines()[1:]]
    texts = recognizer.transcribe_files(out, [data / r[0] for r in rows])
    groups: dict[str, list] = {}
    for r, hyp in zip(rows, texts):
        groups.setdefault(r[2], []).append((r[1], hyp))
    return {voice: {**recognizer.error_rates([a for a, _ in pairs], [b for _, b in pairs]),
                    "utterances": len(pairs)} for voice, pairs in sorted(groups.items())}


def tune_lm(recognizer, out: Path, dev: Path, lm: Path, beam: int) -> dict:
    """The n-gram weight and word bonus of least WER on the dev split (a small grid)."""
    best = None
    for lm_weight in (0.3, 0.6, 1.0):
        for word_bonus in (0.0, 1.5):
            m = recognizer.evaluate_file(out, dev, beam=beam, lm=str(lm), lm_weight=lm_weight,
                                         word_bonus=word_bonus)
            print(f"dev, n-gram weight {lm_weight}, word bonus {word_bonus}: WER "
                  f"{100 * m['wer']:.2f}%, CER {100 * m['cer']:.2f}%")
            if best is None or m["wer"] < best[0]:
                best = (m["wer"], {"lm_weight": lm_weight, "word_bonus": word_bonus})
    return best[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/speech-data", help="corpus folder (made by "
                        "speech_data.py if absent)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--beam", type=int, default=16, help="beam width of the beam search")
    parser.add_argument("--out", default="runs/bench-speech", help="model directory")
    parser.add_argument("--name", default="speech", help="results file name")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the model "
                        "in --out as it is (no training)")
    parser.add_argument("--no-lm", action="store_true", help="skip the beam search with "
                        "DATA/lm.arpa (tuned on dev)")
    parser.add_argument("--text", choices=("digits", "ptb"), default="digits",
                        help="the corpus speech_data.py makes when DATA is absent")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "test.tsv").is_file():
        missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
        if missing:
            print(f"skipped: {' and '.join(missing)} not found (apt-get install espeak-ng sox)")
            return 0
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speech_data.py"),
                        "--out", str(data), "--text", args.text], check=True)
    torch.set_num_threads(args.threads)
    from rnnkit.cli import main as rnnkit

    out = Path(args.out)
    train = ["train", "recognizer", "--data", str(data), "--out", str(out),
             "--max-minutes", str(args.minutes), "--eval-every", "100", "--no-progress"]
    wall = None
    if not args.evaluate_only:
        replace_folder(out, "run.json")
        started = time.perf_counter()
        if rnnkit(train) != 0:
            return 1
        wall = time.perf_counter() - started
    from rnnkit.tasks import recognizer

    results = {"threads": args.threads, "train_wall_s": wall, "data": str(data),
               "train_command": "rnnkit " + shlex.join(train)}
    earlier = RESULTS / f"{args.name}.json"
    if args.evaluate_only and earlier.is_file():         # keep the training run's figures
        import json

        kept = json.loads(earlier.read_text())
        results.update({k: kept[k] for k in ("threads", "train_wall_s", "train_command")
                        if k in kept})
    decodings = [("greedy", {"beam": 1}), (f"beam{args.beam}", {"beam": args.beam})]
    lm = data / "lm.arpa"
    if lm.is_file() and not args.no_lm:
        try:
            weights = tune_lm(recognizer, out, data / "dev.tsv", lm, args.beam)
            decodings.append((f"beam{args.beam}+lm", {"beam": args.beam, "lm": str(lm),
                                                      **weights}))
            results["lm_tuned_on_dev"] = weights
        except ValueError as error:                  # no pyctcdecode or kenlm
            print(f"n-gram: skipped ({error})")
    for name, options in decodings:
        try:
            m = recognizer.evaluate_file(out, data / "test.tsv", **options)
        except ValueError as error:                  # no pyctcdecode: greedy only
            print(f"{name}: skipped ({error})")
            continue
        results[name] = {k: m[k] for k in ("wer", "cer", "loss", "words", "chars",
                                           "utterances", "too_short")}
        results[name]["options"] = options
        print(f"test ({name}): WER {100 * m['wer']:.2f}% of {m['words']} words, CER "
              f"{100 * m['cer']:.2f}% of {m['chars']} characters, {m['utterances']} "
              f"utterances of unseen voices and rate")
    results["greedy_by_voice"] = by_voice(recognizer, out, data)
    for voice, m in results["greedy_by_voice"].items():
        print(f"  {voice:28s} WER {100 * m['wer']:6.2f}%  CER {100 * m['cer']:6.2f}%  "
              f"({m['utterances']} utterances)")
    if wall is not None:
        print(f"training: {wall / 60:.1f} min wall, {args.threads} thread(s): "
              f"{results['train_command']}")
    write_results(args.name, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

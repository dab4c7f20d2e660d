"""UD English-EWT part-of-speech tagging (UPOS, or XPOS with --column xpos): a BiLSTM over
word embeddings + a character BiLSTM per word; model selected on dev accuracy, then test
token accuracy and accuracy on words unseen in training, reported once.

    python benchmarks/tagging.py                      # 2 threads, up to 25 min of training
    python benchmarks/tagging.py --minutes 5 --no-chars --out runs/pos-words

Writes benchmarks/results/tagging.json and prints the figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from _common import DATA as SHARED, write_results

DATA = SHARED / "ud-en-ewt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="training budget")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--column", default="upos", help="upos | xpos")
    parser.add_argument("--no-chars", action="store_true", help="no character encoder")
    parser.add_argument("--embedding-init", type=float, default=0.0,
                        help="U(-x, x) embedding init (0: N(0, 1))")
    parser.add_argument("--out", default="runs/bench-ud-pos", help="model directory")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return 0
    torch.set_num_threads(args.threads)
    from rnnkit.tasks import tagger
    from rnnkit.train import TrainConfig

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    data = tagger.TaggerDataConfig(data=str(DATA), column=args.column, batch_size=32)
    model = {"cell": "lstm", "embedding_size": 100, "hidden_size": 200, "num_layers": 2,
             "char_embedding_size": 32, "char_hidden_size": 0 if args.no_chars else 64,
             "dropout": 0.33, "word_dropout": 0.05, "embedding_init": args.embedding_init}
    train = TrainConfig(epochs=args.epochs, max_minutes=args.minutes, optimizer="adam",
                        lr=2e-3, clip=5.0, lr_decay=2.0, log_every=50,
                        progress=sys.stderr.isatty())
    started = time.perf_counter()
    summary = tagger.train_tagger(data, model, train, out)
    wall = time.perf_counter() - started
    results = {"train_minutes": summary["minutes"], "wall_s": wall, "steps": summary["step"],
               "epochs": summary["epoch"], "threads": args.threads, "model": model,
               "valid": summary.get("valid")}
    test = tagger.evaluate_file(out, DATA / "en_ewt-ud-test.conllu")
    results["test"] = test
    print(f"test {args.column}: accuracy {100 * test['accuracy']:.2f}%, unseen words "
          f"{100 * test['unseen_accuracy']:.2f}% of {test['unseen_words']}, "
          f"{test['tokens']} tokens")
    print(f"wall time {wall / 60:.1f} min ({summary['epoch']} epochs, {args.threads} threads)")
    write_results(f"tagging-{args.column}", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

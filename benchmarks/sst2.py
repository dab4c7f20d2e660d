"""SST-2 (sentence-level binary sentiment) with a BiLSTM classifier, no pretrained embeddings:
train N seeds of one configuration (selected on dev accuracy), report dev/test accuracy and
macro-F1 per seed and for the ensemble that averages their class probabilities.

    python benchmarks/sst2.py                    # 5 seeds, 2 threads (~2 min a seed, 1 thread)
    python benchmarks/sst2.py --seeds 1 --threads 1 --out runs/sst2-quick
    python benchmarks/sst2.py --init-from runs/sst-lm --name sst2_init --out runs/sst2-init

Configuration (chosen on dev only): BiLSTM 1x150, 300-d word embeddings initialised
U(-0.25, 0.25) (``--embedding-init``, the classifier's default; PyTorch's N(0, 1) is moved too
slowly by Adam at lr 1e-3), max pooling, dropout 0.5, vocabulary of
train words seen at least twice (so ``<unk>`` is trained), Adam lr 1e-3, batch 32, clip 5,
8 epochs, validation every half epoch; the checkpoint with the best dev accuracy is kept.

Data: ../shared/data/sst2/{train,dev,test}.tsv (6,920 / 872 / 1,821 sentences); skipped
with a message when absent. Writes benchmarks/results/sst2.json and prints the figures.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import DATA as SHARED, write_results

DATA = SHARED / "sst2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="ensemble size (seeds 1..N)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="runs/bench-sst2",
                        help="base directory; one model directory per seed below it")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--embedding-init", type=float, default=0.25,
                        help="U(-x, x) word-embedding init; 0: PyTorch's N(0, 1)")
    parser.add_argument("--word-dropout", type=float, default=0.0,
                        help="replace training words by <unk> with this probability")
    parser.add_argument("--init-from", default="",
                        help="start the embedding and the forward LSTM from this word-level "
                        "language model (embedding 300, LSTM 1x150; see issue 13)")
    parser.add_argument("--name", default="sst2", help="results file name (sst2)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return 0
    if args.seeds < 1:
        parser.error("--seeds: expected an int >= 1")
    torch.set_num_threads(args.threads)
    from rnnkit.data.labelled import read_labelled
    from rnnkit.tasks import classifier as c
    from rnnkit.train import TrainConfig

    data = c.ClassifierDataConfig(data=str(DATA), batch_size=32, lowercase=False, min_count=2)
    model = {"cell": "lstm", "hidden_size": 150, "embedding_size": 300, "num_layers": 1,
             "bidirectional": True, "pooling": "max", "dropout": 0.5,
             "embedding_dropout": 0.0, "embedding_init": args.embedding_init,
             "word_dropout": args.word_dropout}
    splits = {"dev": DATA / "dev.tsv", "test": DATA / "test.tsv"}
    examples = {name: read_labelled(path) for name, path in splits.items()}
    base = Path(args.out)
    runs, probs = [], {name: [] for name in splits}
    gold = None
    for seed in range(1, args.seeds + 1):
        out = base / f"seed{seed}"
        if out.exists():
            shutil.rmtree(out)
        train = TrainConfig(epochs=args.epochs, optimizer="adam", lr=1e-3, clip=5.0,
                            lr_decay=1.0, weight_decay=0.0, seed=seed, eval_every=109,
                            log_every=50, progress=sys.stderr.isatty(),
                            init_from=args.init_from)
        started = time.perf_counter()
        c.train_classifier(data, model, train, out, log=lambda *a: None)
        wall = time.perf_counter() - started
        net, tokenizer, config = c.load_classifier(out)
        run = {"seed": seed, "dir": str(out), "train_wall_s": round(wall, 1)}
        gold = {}
        for name, lines in examples.items():
            ids = [tokenizer.encode_words(e.text.split()) for e in lines]
            gold[name] = c.label_ids(lines, config["labels"], str(splits[name]))
            p = c.class_probabilities(net, ids, "cpu")
            probs[name].append(p)
            m = c.evaluation(p, gold[name])
            run[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        runs.append(run)
        print(f"seed {seed}: dev acc {100 * run['dev']['accuracy']:.2f}% F1 "
              f"{100 * run['dev']['macro_f1']:.2f} | test acc "
              f"{100 * run['test']['accuracy']:.2f}% F1 {100 * run['test']['macro_f1']:.2f} "
              f"[{wall:.0f} s]", flush=True)
    ensemble = {}
    for name in splits:
        m = c.evaluation(torch.stack(probs[name]).mean(0), gold[name])
        ensemble[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                          "confusion": m["confusion"]}
    single = {name: {"accuracy_mean": statistics.mean(r[name]["accuracy"] for r in runs),
                     "accuracy_std": (statistics.stdev(r[name]["accuracy"] for r in runs)
                                      if len(runs) > 1 else 0.0)}
              for name in splits}
    for name in splits:
        print(f"single models, {name}: accuracy {100 * single[name]['accuracy_mean']:.2f} "
              f"± {100 * single[name]['accuracy_std']:.2f}%")
    print(f"ensemble of {len(runs)} (mean probabilities): dev acc "
          f"{100 * ensemble['dev']['accuracy']:.2f}% F1 {100 * ensemble['dev']['macro_f1']:.2f}"
          f" | test acc {100 * ensemble['test']['accuracy']:.2f}% F1 "
          f"{100 * ensemble['test']['macro_f1']:.2f}")
    total = sum(r["train_wall_s"] for r in runs)
    print(f"training {total / 60:.1f} min in all, {total / len(runs):.0f} s per model "
          f"(torch threads: {args.threads})")
    results = {"data": str(DATA), "threads": args.threads, "seeds": args.seeds,
               "embedding_init": args.embedding_init, "data_config": vars(data) | {"data": "sst2"},
               "model": model, "train": {"epochs": args.epochs, "optimizer": "adam", "lr": 1e-3,
                                         "batch_size": 32, "clip": 5.0, "eval_every": 109},
               "runs": runs, "single": single, "ensemble": ensemble,
               "train_wall_s_total": round(total, 1), "init_from": args.init_from}
    write_results(args.name, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

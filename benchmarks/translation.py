"""Multi30k de→en with an attentional GRU encoder–decoder: train within a time budget,
select on val loss, then report test BLEU/chrF (sacrebleu) with beam search.

    python benchmarks/translation.py                 # 60 min of training, 2 threads
    python benchmarks/translation.py --minutes 5 --threads 1 --out runs/mt-quick

Writes benchmarks/results/translation.json and prints the figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from _common import DATA as SHARED, write_results

DATA = SHARED / "multi30k"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="training budget")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="runs/bench-multi30k", help="model directory")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--cell", default="gru")
    parser.add_argument("--attention", default="additive")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue --out")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return 0
    torch.set_num_threads(args.threads)
    from rnnkit.tasks import translator as tr
    from rnnkit.train import TrainConfig

    out = Path(args.out)
    if out.exists() and not args.resume:
        shutil.rmtree(out)
    data = tr.TranslationDataConfig(data=str(DATA), source_lang="de", target_lang="en",
                                    level="bpe", source_vocab_size=8000,
                                    target_vocab_size=8000, batch_size=args.batch_size)
    model = {"cell": args.cell, "embedding_size": args.hidden, "hidden_size": args.hidden,
             "attention": args.attention, "dropout": 0.3}
    train = TrainConfig(epochs=100, max_minutes=args.minutes, max_steps=args.max_steps,
                        optimizer="adam", lr=1e-3, clip=1.0, lr_decay=2.0, log_every=50,
                        eval_every=500, progress=sys.stderr.isatty())
    started = time.perf_counter()
    if args.resume:
        summary = tr.train_translator(None, None, None, out, resume=True,
                                      train_overrides={"max_minutes": args.minutes})
    else:
        summary = tr.train_translator(data, model, train, out)
    train_wall = time.perf_counter() - started
    results = {"train_minutes": summary["minutes"], "train_wall_s": train_wall,
               "steps": summary["step"], "threads": args.threads, "model": model,
               "valid": summary.get("valid")}
    for beam in sorted({1, args.beam}):
        t0 = time.perf_counter()
        m = tr.evaluate_file(out, str(DATA / "test_2016_flickr.de"),
                              str(DATA / "test_2016_flickr.en"), beam=beam, log=print)
        m["seconds"] = time.perf_counter() - t0
        results[f"test_beam{beam}"] = m
        print(f"test (beam {beam}): BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f}, "
              f"ppl {m['ppl']:.2f} [{m['seconds']:.0f} s]")
    print(f"training {summary['minutes']:.1f} min ({summary['step']} steps, "
          f"{args.threads} threads); sacrebleu {results[f'test_beam{args.beam}']['signature']}")
    write_results("translation", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

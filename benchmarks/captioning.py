"""Image captioning on rendered scenes (benchmarks/caption_data.py, no download): train a
CNN + attentional LSTM captioner for a number of steps, select on validation loss, then
report BLEU (sacrebleu, every caption of an image as a reference) on the test scenes —
combinations of shapes, colours, sizes, positions, counts and relations never seen in
training — with greedy and beam search, and draw the attention of a few test images.

    python benchmarks/captioning.py                    # 2000 steps (~4 min), 1 thread
    python benchmarks/captioning.py --steps 4000 --pictures docs --out runs/cap

Writes benchmarks/results/captioning.json and prints the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _common import write_results, replace_folder
from caption_data import make_scenes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--minutes", type=float, default=0.0, help="time budget (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data", default="runs/scenes", help="scenes folder (made if absent)")
    parser.add_argument("--out", default="runs/bench-captioning", help="model directory")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--conv-channels", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--no-input-feeding", action="store_true")
    parser.add_argument("--pictures", metavar="FOLDER",
                        help="write the attention pictures of 3 test images here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rnnkit.data.images import read_captions
    from rnnkit.tasks import captioner as cap
    from rnnkit.train import TrainConfig

    data = Path(args.data)
    if not (data / "test.tsv").is_file():
        t0 = time.perf_counter()
        make_scenes(data, {"train": 4000, "valid": 300, "test": 500})
        print(f"rendered the scenes into {data} [{time.perf_counter() - t0:.0f} s]")
    out = Path(args.out)
    replace_folder(out, "run.json")
    model = {"cell": "lstm", "conv_channels": args.conv_channels, "conv_layers": 3,
             "embedding_size": 64, "hidden_size": args.hidden, "dropout": 0.2,
             "input_feeding": not args.no_input_feeding}
    train = TrainConfig(epochs=100, max_steps=args.steps, max_minutes=args.minutes,
                        optimizer="adam", lr=args.lr,
                        clip=1.0, lr_decay=2.0, log_every=100, eval_every=300,
                        progress=sys.stderr.isatty())
    started = time.perf_counter()
    summary = cap.train_captioner(cap.CaptionDataConfig(data=str(data), image_size=64,
                                                        batch_size=args.batch_size),
                                  model, train, out)
    results = {"train_minutes": summary["minutes"],
               "train_wall_s": time.perf_counter() - started, "steps": summary["step"],
               "threads": args.threads, "model": model, "valid": summary.get("valid")}
    for beam in sorted({1, args.beam}):
        t0 = time.perf_counter()
        m = cap.evaluate_file(out, str(data / "test.tsv"), beam=beam, log=print)
        m["seconds"] = time.perf_counter() - t0
        results[f"test_beam{beam}"] = m
        print(f"test, unseen scenes (beam {beam}): BLEU {m['bleu']:.2f}, ppl {m['ppl']:.2f} "
              f"({m['images']} images) [{m['seconds']:.0f} s]")
    print(f"training {summary['minutes']:.1f} min ({summary['step']} steps, {args.threads} "
          f"thread(s)); sacrebleu {results[f'test_beam{args.beam}']['signature']}")
    if args.pictures:
        images = list(dict.fromkeys(c.path for c in read_captions(data / "test.tsv")))
        for k, image in enumerate(images[:3]):
            path = Path(args.pictures) / f"caption_attention_{k + 1}.png"
            text = cap.plot_attention(out, image, path)
            print(f"{path}: {text}")
    write_results("captioning", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

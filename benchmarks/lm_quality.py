"""Language-model quality on the shared benchmark data, with wall time on this machine.

    python benchmarks/lm_quality.py ptb            # PTB word level, 2x200 LSTM
    python benchmarks/lm_quality.py shakespeare    # Tiny Shakespeare, character LSTM
    python benchmarks/lm_quality.py ptb --cell layernorm_lstm      # same recipe, another cell
    python benchmarks/lm_quality.py ptb --max-minutes 3 --threads 1   # a short speed check
    python benchmarks/lm_quality.py ptb --backend bptt --max-minutes 3  # the hand engine

``ptb``: the model is selected on ``ptb.valid.txt`` and the test split is evaluated once,
at the end. ``shakespeare``: first 90% of ``input.txt`` trains, the last 10% validates
(the issue's protocol; there is no test split). Each run writes its model directory under
``runs/`` and its figures to ``benchmarks/results/lm_<name>.json`` (``lm_<name>_<cell>``
for another ``--cell``, ``_<backend>`` for a ``--backend`` other than auto, with ``_<M>min`` added for a ``--max-minutes`` other than the
recipe's). Skips cleanly when ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _common import DATA, write_results  # noqa: E402

from rnnkit.layers import BACKENDS  # noqa: E402
from rnnkit.tasks import lm  # noqa: E402
from rnnkit.train import TrainConfig  # noqa: E402

SETTINGS = {
    # Zaremba et al.'s "small" model (2x200 LSTM) with tied embeddings and light dropout,
    # trained with the classic SGD schedule (lr 20, divide by 4 when validation stalls).
    "ptb": dict(
        data=lm.LMDataConfig(data=str(DATA / "ptb"), level="word", batch_size=20, bptt=35),
        model={"cell": "lstm", "hidden_size": 200, "num_layers": 2, "dropout": 0.2,
               "tie_weights": True},
        train=TrainConfig(epochs=16, max_minutes=28, optimizer="sgd", lr=20.0, clip=0.25,
                          lr_decay=4.0, log_every=200),
        test=DATA / "ptb" / "ptb.test.txt"),
    "shakespeare": dict(
        data=lm.LMDataConfig(data=str(DATA / "tinyshakespeare" / "input.txt"), level="char",
                             valid_fraction=0.1, batch_size=32, bptt=100),
        model={"cell": "lstm", "hidden_size": 384, "num_layers": 2, "dropout": 0.1},
        train=TrainConfig(epochs=100, max_minutes=19, optimizer="adam", lr=2e-3, clip=1.0,
                          lr_decay=2.0, eval_every=250, log_every=50),
        test=None),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(SETTINGS))
    parser.add_argument("--cell", default="lstm",
                        help="the recurrent cell, any registered name (default lstm)")
    parser.add_argument("--backend", default="auto",
                        choices=BACKENDS,
                        help="the engine of the recurrent layers (default auto)")
    parser.add_argument("--max-minutes", type=float,
                        help="training budget in minutes (default: the recipe's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", help="model directory (default runs/bench-<run name>)")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    s = dict(SETTINGS[args.name])
    run = f"lm_{args.name}"
    if args.cell != s["model"]["cell"]:
        s["model"] = {**s["model"], "cell": args.cell}
        run += f"_{args.cell}"
    if args.backend != "auto":
        s["model"] = {**s["model"], "backend": args.backend}
        run += f"_{args.backend}"
    if args.max_minutes is not None and args.max_minutes != s["train"].max_minutes:
        s["train"] = dataclasses.replace(s["train"], max_minutes=args.max_minutes)
        run += f"_{args.max_minutes:g}min"
    if args.threads:
        run += f"_{args.threads}thread"
    out = Path(args.out or ROOT / "runs" / f"bench-{run[3:]}")
    if (out / "train_state.safetensors").exists():
        print(f"{out} holds a finished run; remove it to measure again")
        return 1
    t0 = time.perf_counter()
    summary = lm.train_lm(s["data"], s["model"], s["train"], out, sample_chars=300)
    wall = time.perf_counter() - t0
    result = {"name": args.name, "settings": {"data": s["data"].__dict__, "model": s["model"],
                                               "train": s["train"].__dict__},
              "threads": torch.get_num_threads(), "wall_minutes": wall / 60,
              "train_minutes": summary["minutes"],
              "steps": summary["step"], "epochs_done": summary["epoch"],
              "tokens_per_s": summary["units"] / (summary["minutes"] * 60),
              "valid": summary["valid"]}
    if s["test"] is not None:
        result["test"] = lm.evaluate_file(out, s["test"])
        print(f"test: {lm.describe_metrics(result['test'])}")
    print(f"wall time {wall / 60:.1f} min, {result['tokens_per_s']:.0f} training tokens/s")
    write_results(run, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

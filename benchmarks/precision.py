"""Mixed precision on the CPU: bf16 autocast against fp32 with the PTB recipe.

    python benchmarks/precision.py                # 300 steps each, both backends
    python benchmarks/precision.py --steps 100

The recipe of ``benchmarks/lm_quality.py`` (2×200 LSTM, tied embeddings, dropout 0.2, SGD
lr 20, 20 streams × 35 tokens) for a fixed number of steps, one process, two threads, with
``--precision fp32`` and ``bf16``, for the native (oneDNN) layers and the hand BPTT engine
(which runs in fp32 inside autocast: only the embedding-to-output parts change). Prints
tokens/s and the validation perplexity after the steps, and writes
``benchmarks/results/precision.json``. Skips cleanly when ``../shared/data`` is absent.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ptb_steps, train_with_cli, write_results  # noqa: E402


def main(argv=None) -> int:
    run = ptb_steps(argv, __doc__)
    if run is None:
        return 0
    steps, common = run
    common += ["--dropout", 0.2, "--batch-size", 20]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("native", "bptt"):
            for precision in ("fp32", "bf16"):
                runs[f"{backend} {precision}"] = train_with_cli(
                    [*common, "--backend", backend, "--precision", precision],
                    Path(tmp) / f"{backend}-{precision}", threads=2)
    print(f"PTB word, 2x200 LSTM, {steps} steps, 1 process x 2 threads")
    print(f"{'':12} {'tok/s':>8} {'valid ppl':>10} {'vs fp32':>8}")
    for name, run in runs.items():
        base = runs[name.split()[0] + " fp32"]
        speed = run["train"]["tok_per_s"] / base["train"]["tok_per_s"]
        run["valid"]["ppl"] = math.exp(run["valid"]["loss"])
        print(f"{name:12} {run['train']['tok_per_s']:8,.0f} {run['valid']['ppl']:10.2f} "
              f"{speed:7.2f}x")
    write_results("precision", {"steps": steps, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())

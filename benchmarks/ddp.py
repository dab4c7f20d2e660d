"""Distributed data-parallel training against one process, on this machine.

    python benchmarks/ddp.py                 # PTB word, the lm_quality recipe, 300 steps
    python benchmarks/ddp.py --steps 100     # shorter

The PTB recipe of ``benchmarks/lm_quality.py`` (2×200 LSTM, tied embeddings, SGD lr 20,
bptt 35, 20 streams in all) for a fixed number of steps, trained as one process with two
threads (``--batch-size 20``) and as two processes with one thread each (``--nproc 2
--batch-size 10``): the two see the same batches, so with dropout off their losses agree up
to float rounding. On two cores no speed-up is expected; the point is the overhead of the
processes and their communication (gloo), and the equality. Prints a table and writes
``benchmarks/results/ddp.json``. Skips cleanly when ``../shared/data`` is absent.
"""

from __future__ import annotations

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
    common += ["--dropout", 0]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"1 process x 2 threads": train_with_cli([*common, "--batch-size", 20],
                                                        Path(tmp) / "one", threads=2),
                "2 processes x 1 thread": train_with_cli([*common, "--batch-size", 10,
                                                          "--nproc", 2], Path(tmp) / "two")}
    print(f"PTB word, 2x200 LSTM, 20 streams x 35 tokens a step, {steps} steps, "
          f"dropout 0")
    print(f"{'':24} {'tok/s':>8} {'per process':>12} {'train loss':>11} {'valid loss':>11} "
          f"{'wall s':>7}")
    for name, run in runs.items():
        t, v = run["train"], run["valid"]
        print(f"{name:24} {t['tok_per_s']:8,.0f} "
              f"{t.get('tok_per_s_per_process', t['tok_per_s']):12,.0f} {t['loss']:11.6f} "
              f"{v['loss']:11.6f} {run['wall_s']:7.1f}")
    one, two = runs.values()
    ratio = two["train"]["tok_per_s"] / one["train"]["tok_per_s"]
    difference = abs(one["valid"]["loss"] - two["valid"]["loss"]) / one["valid"]["loss"]
    print(f"2 processes / 1 process: {ratio:.2f}x tokens/s; valid loss relative difference "
          f"{difference:.1e}")
    write_results("ddp", {"steps": steps, "runs": runs, "speed_ratio": ratio,
                          "valid_loss_relative_difference": difference})
    return 0


if __name__ == "__main__":
    sys.exit(main())

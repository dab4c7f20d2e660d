"""Why LSTM and GRU exist, measured: long-range memory tasks and gradient flow.

    python benchmarks/memory.py adding     # lengths 50,100,200 x rnn,lstm,gru,irnn
    python benchmarks/memory.py reber      # embedded Reber grammar, LSTM vs tanh RNN
    python benchmarks/memory.py flow       # gradient flow at T=200, tanh RNN vs LSTM,
                                           # untrained and trained (LSTM: 8000 steps)
    python benchmarks/memory.py indrnn     # IndRNN (2 layers, as the paper) at T=200, 1000

Any table takes ``--cells`` (registered names), ``--lengths`` and ``--layers``.

Budgets are fixed numbers of Adam steps (batch 50, 128 hidden units), stated in the
output; figures go to ``benchmarks/results/memory_<name>.json`` and pictures to
``docs/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _common import write_results  # noqa: E402
from rnnkit.diagnostics import adding_batch, gradient_flow, plot_gradient_flow  # noqa: E402
from rnnkit.diagnostics.memory import MemoryModel, fit_memory_model  # noqa: E402


def run_table(task: str, lengths, cells, steps: int, layers: int = 1) -> list[dict]:
    rows = []
    for length in lengths:
        for cell in cells:
            _, r = fit_memory_model(task, length, cell, steps=steps, layers=layers)
            rows.append({**r.__dict__, "layers": layers, "solved": r.solved})
            print(f"{task:7s} T={length:<4d} {cell:6s} {layers}x128 {r.metric} {r.value:.4f} "
                  f"(baseline {r.baseline:.4f}) {'solved' if r.solved else '-'} [{steps} "
                  f"steps, {r.seconds:.0f} s]", flush=True)
    return rows


def flow_figure(length: int, steps: int, lstm_steps: int) -> dict:
    """‖dL_T/dh_t‖ of a tanh RNN and an LSTM on the adding problem, untrained and trained
    (the LSTM for ``lstm_steps``, the RNN for ``steps``)."""
    g = torch.Generator().manual_seed(123)
    x, y = adding_batch(50, length, g)
    series, summary = {}, {}
    for cell in ("rnn", "lstm"):
        torch.manual_seed(0)
        untrained = MemoryModel("adding", cell, 128)
        budget = lstm_steps if cell == "lstm" else steps
        trained, result = fit_memory_model("adding", length, cell, steps=budget)
        for label, model in (("untrained", untrained), ("trained", trained)):
            (flow,) = gradient_flow(model, lambda: ((model(x) - y) ** 2).mean())
            name = f"{'tanh RNN' if cell == 'rnn' else 'LSTM'}, {label}"
            series[name] = [flow]
            summary[name] = {"first": flow.h[0], "last": flow.h[-1],
                             "ratio": flow.h[0] / flow.h[-1]}
        summary[f"{cell} test MSE after {budget} steps"] = result.value
    out = ROOT / "docs" / "gradient_flow.png"
    plot_gradient_flow(series, out, title=f"adding problem, T={length}: ‖∂L/∂h_t‖ for the "
                       f"loss at the last step")
    print(f"wrote {out}")
    for name, s in summary.items():
        print(f"  {name}: {s}")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["adding", "reber", "flow", "indrnn"])
    parser.add_argument("--steps", type=int, default=0, help="override the step budget")
    parser.add_argument("--cells", default="", help="comma-separated registered cells")
    parser.add_argument("--lengths", default="", help="comma-separated sequence lengths")
    parser.add_argument("--layers", type=int, default=0, help="recurrent layers")
    parser.add_argument("--lstm-steps", type=int, default=8000,
                        help="flow: the LSTM's training steps (default 8000)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    # name -> (task, lengths, cells, steps, layers)
    tables = {"adding": ("adding", [50, 100, 200], ["rnn", "lstm", "gru", "irnn"], 2000, 1),
              "reber": ("reber", [10], ["rnn", "lstm"], 3000, 1),
              "indrnn": ("adding", [200, 1000], ["indrnn"], 8000, 2)}
    if args.name in tables:
        task, lengths, cells, steps, layers = tables[args.name]
        result = run_table(task, [int(n) for n in args.lengths.split(",")] if args.lengths
                           else lengths, args.cells.split(",") if args.cells else cells,
                           args.steps or steps, args.layers or layers)
    else:
        result = flow_figure(200, args.steps or 2000, args.lstm_steps)
    minutes = (time.perf_counter() - started) / 60
    print(f"{minutes:.1f} min on {torch.get_num_threads()} threads")
    name = f"memory_{args.name}" + (f"_{args.lengths.replace(',', '-')}" if args.lengths else "")
    write_results(name, {"result": result, "minutes": minutes})
    return 0


if __name__ == "__main__":
    sys.exit(main())

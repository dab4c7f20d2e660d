"""The compiled loops (rnnkit.compiled) against PyTorch's fused kernel and the Python engine.

At the shapes of ``bench_core.py`` it times one training pass (forward, then backward of a
loss over the outputs and final state) of the same single-layer LSTM, GRU and tanh RNN through

- ``native``    ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (the LSTM's is oneDNN's fused RNN on the
                CPU; the GRU's and RNN's are ATen's loops over MKL products),
- ``bptt``      rnnkit's hand-BPTT engine in Python (``rnnkit.autograd.recurrent_python``,
                what ``backend="bptt"`` ran before the compiled loops),
- ``compiled``  the same layer with the time loops of :mod:`rnnkit.compiled` (what
                ``backend="bptt"`` runs now wherever they apply),

interleaved repetition by repetition, and reports medians and speeds relative to native
(> 1: faster than native). For scale it also times ``gemm``: the matrix products alone that
the compiled path runs (input projection, T recurrent products forward and backward, the
weight and input gradients), each through oneDNN's linear op — a reference floor (the loops
run the step products of a small weight, <= 1 MiB, by a brgemm micro-kernel instead, which
can come in under it).
Usage::

    python benchmarks/bench_compiled.py             # writes benchmarks/results/core_compiled.json
    python benchmarks/bench_compiled.py --quick     # the first shape, 3 repetitions
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import rnnkit  # noqa: E402
from bench_core import SHAPES, sgemm_gflops, time_interleaved  # noqa: E402
from rnnkit import compiled  # noqa: E402
from rnnkit.autograd import recurrent_python  # noqa: E402
from rnnkit.cells import make_cell  # noqa: E402
from rnnkit.files import write_json  # noqa: E402

NATIVE = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU,
          "rnn_tanh": functools.partial(torch.nn.RNN, nonlinearity="tanh"),
          "rnn_relu": functools.partial(torch.nn.RNN, nonlinearity="relu")}


class CompiledStack(rnnkit.RecurrentStack):
    """A RecurrentStack whose layers run through ``rnnkit.compiled.recurrent_compiled``."""

    def _stack(self, engine, x, batch_sizes, state0):
        return super()._stack(compiled.recurrent_compiled, x, batch_sizes, state0)


class PythonStack(rnnkit.RecurrentStack):
    """A RecurrentStack whose layers run through the Python engine always."""

    def _stack(self, engine, x, batch_sizes, state0):
        return super()._stack(recurrent_python, x, batch_sizes, state0)


def gemm_floor(cell: str, shape, reps: int) -> float:
    """Median seconds of the compiled path's matrix products alone, through its ``linear``
    (oneDNN for float32), the forward's step weight packed once."""
    T, B, H = shape
    G = make_cell(cell).gates
    module = compiled.load()
    linear = module.linear                                  # y = x @ w.T (+ bias)
    x, w_ih, w_hh = torch.randn(T * B, H), torch.randn(G * H, H), torch.randn(G * H, H)
    b, h = torch.randn(G * H), torch.randn(B, H)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        xw = linear(x, w_ih, b)                             # input projection (N, G*H)
        w, wt = module.packed(w_hh, B), w_hh.t()            # as the loops hold them
        for t in range(T):
            linear(h, w)                                    # forward step
        for t in range(T):
            linear(xw[t * B:(t + 1) * B], wt)               # backward step
        linear(xw.t(), x.t())                               # dweight_hh (same shapes)
        linear(xw.t(), x.t())                               # dweight_ih
        linear(xw, w_ih.t())                                # dx
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def time_models(cell: str, shape, reps: int) -> dict[str, float]:
    """Median seconds per forward+backward of each model, interleaved."""
    T, B, H = shape
    torch.manual_seed(0)
    x = torch.randn(T, B, H, requires_grad=True)
    models = {}
    torch.manual_seed(0)
    models["native"] = NATIVE[cell](H, H)
    torch.manual_seed(0)
    models["bptt"] = PythonStack(H, H, backend="bptt", cell=cell)
    models["compiled"] = CompiledStack(H, H, backend="bptt", cell=cell)
    models["compiled"].load_state_dict(models["bptt"].state_dict())
    return time_interleaved(models, x, reps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=9, help="timed repetitions per model")
    parser.add_argument("--quick", action="store_true", help="only the first shape, 3 reps")
    parser.add_argument("--cells", default="lstm,gru,rnn_tanh",
                        help=f"comma-separated, of: {', '.join(NATIVE)}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "core_compiled.json"),
                        help="JSON file for the numbers")
    args = parser.parse_args(argv)
    shapes = SHAPES[:1] if args.quick else SHAPES
    reps = 3 if args.quick else args.reps
    if compiled.load() is None:
        print(f"skipped: {compiled.unavailable_reason()}")
        return 0

    gflops = sgemm_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, sgemm {gflops:.0f} GFLOP/s (2048³)")
    header = (f"{'cell':8s} {'T':>4s} {'B':>3s} {'H':>5s} {'native ms':>9s} {'bptt ms':>8s} "
              f"{'compiled ms':>11s} {'gemm ms':>8s} {'bptt/native':>11s} "
              f"{'compiled/native':>15s}")
    print(header)
    print("-" * len(header))
    rows = []
    for cell in args.cells.split(","):
        for shape in shapes:
            t = time_models(cell, shape, reps)
            floor = gemm_floor(cell, shape, reps)
            row = {"cell": cell, "T": shape[0], "B": shape[1], "H": shape[2],
                   **{f"{name}_ms": s * 1e3 for name, s in t.items()}, "gemm_ms": floor * 1e3,
                   # speeds relative to native: > 1 means faster than torch.nn
                   "bptt_vs_native": t["native"] / t["bptt"],
                   "compiled_vs_native": t["native"] / t["compiled"]}
            rows.append(row)
            print(f"{cell:8s} {shape[0]:4d} {shape[1]:3d} {shape[2]:5d} {row['native_ms']:9.1f} "
                  f"{row['bptt_ms']:8.1f} {row['compiled_ms']:11.1f} {row['gemm_ms']:8.1f} "
                  f"{row['bptt_vs_native']:10.2f}x {row['compiled_vs_native']:14.2f}x",
                  flush=True)
    print("speeds relative to torch.nn (>1: faster than native); times are medians of "
          "forward+backward; gemm: the compiled path's matrix products alone (oneDNN op)")
    out = Path(args.out)
    write_json(out, {"torch": torch.__version__, "threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                     "sgemm_gflops": gflops, "reps": reps, "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

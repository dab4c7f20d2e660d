"""Forward+backward speed of rnnkit's recurrent layers on the CPU, side by side.

For every cell and shape it times one training pass (forward, then backward of a loss over
the outputs and final state) of the same single-layer model through

- ``bptt``     rnnkit's hand-derived BPTT engine (its compiled loops where they apply:
               the LSTM, GRU and Elman cells; ``RNNKIT_COMPILED=0``: the Python engine),
- ``native``   PyTorch's fused kernel (oneDNN on CPU) — standard cells only,
- ``autograd`` the engine's forward under autograd: an autograd loop over the same cell,
- ``compile``  that autograd loop with the cell's step compiled by ``torch.compile``
               (inductor, forward and backward; one compilation per cell and shape, not
               timed). The step, not the loop: compiling T unrolled steps takes minutes per
               shape and recompiles for every new length, which no user can afford,

interleaving the backends repetition by repetition so that machine noise hits all alike,
and reports medians and the ratios against the hand engine. The machine's sgemm rate is
measured in the same run for scale, and the fraction of it that the hand engine's LSTM
reaches at H = 1024 (its products' flops over its time). A second table times the parallel scan
(:mod:`rnnkit.scan`, ``backend="scan"``) against the step form (the hand engine) for the
cells whose state is linear in the previous one, at T = 256, 1024, 4096. Usage::

    python benchmarks/bench_core.py                 # full tables, writes benchmarks/results/core.json
    python benchmarks/bench_core.py --quick         # one small shape, fewer repetitions
    python benchmarks/bench_core.py --scan-only     # the scan table alone
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rnnkit  # noqa: E402
from rnnkit.cells import cell_names, make_cell  # noqa: E402
from rnnkit.files import write_json  # noqa: E402

SHAPES = [(35, 20, 200), (35, 20, 650), (35, 64, 1024), (100, 32, 256)]  # (T, B, I = H)
SCAN_SHAPES = [(256, 16, 256), (1024, 16, 256), (4096, 16, 256)]          # (T, B, I = H)


def registered_cells() -> list[str]:
    """Every cell of the registry once ("rnn" with default options is "rnn_tanh")."""
    seen = {}
    for name in cell_names():
        seen.setdefault(make_cell(name).name, name)
    return list(seen.values())


def sgemm_gflops(n: int = 2048, reps: int = 5, onednn: bool = False) -> float | None:
    """Median single-precision matrix-multiply rate of this machine, GFLOP/s: torch.mm's
    (MKL here), or with ``onednn`` oneDNN's, as the compiled loops run their products
    (None where they cannot be built)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    if onednn:
        from rnnkit import compiled

        if compiled.load() is None:
            return None
        linear = compiled.load().linear

        def product():
            return linear(a, b)
    else:
        def product():
            return a @ b
    product()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        product()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


class _CompiledStep(torch.nn.Module):
    """The ``compile`` peer: a one-layer stack's forward as an autograd loop over time whose
    step is the cell's ``step_forward`` compiled by ``torch.compile``."""

    def __init__(self, stack):
        super().__init__()
        self.stack = stack
        cell = stack.cell.for_mode(stack.training)   # zoneout: masks drawn, as bptt's
        torch._dynamo.reset()     # the step's code object is shared by every cell and shape:
        #                           without this, dynamo's recompile limit (8) soon falls back
        #                           to running it uncompiled

        def step(xw, state, weight_hh, bias_hh, *extra):
            return cell.step_forward(xw, state, weight_hh, bias_hh, *extra)[0]

        self.cell = cell
        self.step = torch.compile(step, dynamic=False)

    def forward(self, x):
        from rnnkit.bptt import input_projection

        T, B, _ = x.shape
        s, cell = self.stack, self.cell
        weight_ih, weight_hh, bias_ih, bias_hh, extra = s.layer_params(0)
        xw = input_projection(cell, x.reshape(T * B, -1), weight_ih, bias_ih, bias_hh)
        xw = xw.view(T, B, -1)
        state = cell.initial_state(B, s.hidden_size, dtype=x.dtype)
        bias = None if cell.fold_bias_hh else bias_hh
        outs = []
        for t in range(T):
            state = self.step(xw[t], state, weight_hh, bias, *extra)
            outs.append(state[0])
        return torch.stack(outs), state


def cell_text(value, spec: str, suffix: str = "") -> str:
    """One table cell: ``value`` formatted, or a dash of the same width where there is none."""
    if value is None:
        return "-".rjust(int(spec.split(".")[0]) + len(suffix))
    return format(value, spec) + suffix


def lstm_gflops(shape, seconds: float) -> float:
    """The rate of a one-layer LSTM training pass's matrix products (I = H): forward
    2·N·4H·(I + H) (input projection, recurrent products), backward twice that (dx and
    dweight_ih, dh_{t-1} and dweight_hh), N = T·B rows — GFLOP/s at ``seconds`` a pass."""
    T, B, H = shape
    return 6 * T * B * 4 * H * (H + H) / seconds / 1e9


def train_pass(model, x):
    out, state = model(x)
    h = state[0] if isinstance(state, tuple) else state
    (out.sum() + h.sum()).backward()


class _LogScan(torch.nn.Module):
    """A one-layer stack of a scan cell run by the log-space method (the GPU's)."""

    def __init__(self, stack):
        super().__init__()
        self.stack = stack

    def forward(self, x):
        from rnnkit.scan import recurrent_scan

        T, B, _ = x.shape
        s = self.stack
        h0 = x.new_zeros(B, s.hidden_size)
        out, final = recurrent_scan(s.cell, x.reshape(T * B, -1), [B] * T, (h0,),
                                    s.weight_ih_l0, None, s.bias_ih_l0, None, method="log")
        return out.view(T, B, -1), final


def stack(cell: str, backend: str, H: int):
    """A one-layer stack of ``cell``: a registered name, or "<name>+zoneout" for zoneout 0.1
    on it (the stack in training mode, so the masks are drawn)."""
    name, _, noise = cell.partition("+")
    if noise not in ("", "zoneout"):
        raise ValueError(f"{cell!r}: expected a registered cell or <cell>+zoneout")
    options = {"zoneout": 0.1} if noise else None
    return rnnkit.RecurrentStack(H, H, backend=backend, cell=name, cell_options=options)


def time_backends(cell, backends, shape, reps):
    """Median seconds per forward+backward for each backend, interleaved."""
    T, B, H = shape
    torch.manual_seed(0)
    x = torch.randn(T, B, H, requires_grad=True)
    models = {}
    for backend in backends:
        torch.manual_seed(0)
        if backend == "scan-log":          # the parallel scan's log-space method, on the CPU
            models[backend] = _LogScan(stack(cell, "scan", H))
        elif backend == "compile":
            models[backend] = _CompiledStep(stack(cell, "bptt", H))
        else:
            models[backend] = stack(cell, backend, H)
    return time_interleaved(models, x, reps)


def time_interleaved(models: dict, x, reps: int) -> dict:
    """Median seconds of one training pass of each model on ``x``, the models taking turns
    repetition by repetition (the first round is warm-up)."""
    times = {name: [] for name in models}
    for rep in range(reps + 1):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            x.grad = None
            t0 = time.perf_counter()
            train_pass(model, x)
            if rep:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def scan_table(shapes, reps) -> list[dict]:
    """The parallel scan against the step form (the hand engine), forward+backward, for
    every registered cell the scan trains; prints a table and returns its rows."""
    from rnnkit.scan import supports

    cells = [name for name in registered_cells() if supports(make_cell(name))]
    print(f"{'cell':10s} {'T':>5s} {'B':>3s} {'H':>4s} {'step ms':>9s} {'scan ms':>9s} "
          f"{'log-scan ms':>11s} {'scan/step':>10s} {'log/step':>9s}")
    rows = []
    for name in cells:
        for shape in shapes:
            t = time_backends(name, ["bptt", "scan", "scan-log"], shape, reps)
            rows.append({"cell": name, "T": shape[0], "B": shape[1], "H": shape[2],
                         "step_ms": t["bptt"] * 1e3, "scan_ms": t["scan"] * 1e3,
                         "log_scan_ms": t["scan-log"] * 1e3,
                         "speed_up": t["bptt"] / t["scan"],
                         "log_speed_up": t["bptt"] / t["scan-log"]})
            print(f"{name:10s} {shape[0]:5d} {shape[1]:3d} {shape[2]:4d} {t['bptt'] * 1e3:9.1f} "
                  f"{t['scan'] * 1e3:9.1f} {t['scan-log'] * 1e3:11.1f} "
                  f"{t['bptt'] / t['scan']:9.2f}x {t['bptt'] / t['scan-log']:8.2f}x", flush=True)
    print("scan: the sequential scan (the CPU's method); log-scan: the log-space parallel "
          "scan (a GPU's), run here on the CPU")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per backend")
    parser.add_argument("--quick", action="store_true", help="only the first shape, 3 reps")
    parser.add_argument("--cells", default=",".join(registered_cells() + ["lstm+zoneout"]),
                        help="comma-separated registered cells, or <cell>+zoneout (default: "
                             "all, and zoneout on the LSTM)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "core.json"),
                        help="JSON file for the numbers")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the torch.compile peer (its compilations take minutes)")
    parser.add_argument("--no-scan", action="store_true", help="leave out the scan table")
    parser.add_argument("--scan-only", action="store_true",
                        help="only the table of the parallel scan against the step form")
    args = parser.parse_args(argv)
    for name in args.cells.split(","):
        try:
            stack(name, "bptt", 1)
        except ValueError as error:
            parser.error(f"--cells: {error}")
    shapes = SHAPES[:1] if args.quick else SHAPES
    reps = 3 if args.quick else args.reps

    gflops, onednn = sgemm_gflops(), sgemm_gflops(onednn=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, sgemm {gflops:.0f} GFLOP/s (2048³, "
          f"torch.mm)" + (f", {onednn:.0f} through oneDNN" if onednn else ""))
    scan_rows = ([] if args.no_scan else
                 scan_table(SCAN_SHAPES[:1] if args.quick else SCAN_SHAPES, reps))
    if args.scan_only:
        out = Path(args.out).with_name("core_scan.json")
        write_json(out, {"torch": torch.__version__, "threads": torch.get_num_threads(),
                         "reps": reps, "scan_rows": scan_rows})
        print(f"wrote {out}")
        return 0
    rows = []
    header = (f"{'cell':17s} {'T':>4s} {'B':>3s} {'H':>5s} {'bptt ms':>8s} {'native ms':>9s} "
              f"{'autograd ms':>11s} {'compile ms':>10s} {'bptt/native':>11s} "
              f"{'bptt/autograd':>13s} {'bptt/compile':>12s}")
    print(header)
    print("-" * len(header))
    peers = ["autograd"] + ([] if args.no_compile else ["compile"])
    for name in args.cells.split(","):
        cell = stack(name, "bptt", 1).cell
        standard = cell.native_mode is not None
        backends = ["bptt", *(["native"] if standard else []), *peers]
        for shape in shapes:
            t = time_backends(name, backends, shape, reps)
            row = {"cell": name, "T": shape[0], "B": shape[1], "H": shape[2],
                   **{f"{b}_ms": t[b] * 1e3 for b in backends},
                   # speed ratios: > 1 means the hand engine is faster
                   **{f"speed_vs_{b}": t[b] / t["bptt"] for b in backends[1:]}}
            if name == "lstm" and shape[2] == 1024:
                row["sgemm_fraction"] = lstm_gflops(shape, t["bptt"]) / gflops
                if onednn:
                    row["onednn_fraction"] = lstm_gflops(shape, t["bptt"]) / onednn
            rows.append(row)

            ms = {b: row.get(f"{b}_ms") for b in ("native", "autograd", "compile")}
            vs = {b: row.get(f"speed_vs_{b}") for b in ("native", "autograd", "compile")}
            print(f"{name:17s} {shape[0]:4d} {shape[1]:3d} {shape[2]:5d} {row['bptt_ms']:8.1f} "
                  f"{cell_text(ms['native'], '9.1f')} {cell_text(ms['autograd'], '11.1f')} "
                  f"{cell_text(ms['compile'], '10.1f')} {cell_text(vs['native'], '10.2f', 'x')} "
                  f"{cell_text(vs['autograd'], '12.2f', 'x')} "
                  f"{cell_text(vs['compile'], '11.2f', 'x')}", flush=True)
            if "sgemm_fraction" in row:
                print(f"  the hand engine's LSTM at H {shape[2]}: "
                      f"{lstm_gflops(shape, t['bptt']):.0f} GFLOP/s in its products, "
                      f"{row['sgemm_fraction']:.0%} of torch.mm's sgemm rate"
                      + (f", {row['onednn_fraction']:.0%} of oneDNN's" if onednn else ""),
                      flush=True)
    print("ratios are speeds relative to the hand engine's peer (>1: bptt faster); "
          "times are medians of forward+backward")
    out = Path(args.out)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "sgemm_gflops": gflops, "onednn_gflops": onednn, "reps": reps, "rows": rows, "scan_rows": scan_rows}
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

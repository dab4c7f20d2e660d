"""Forward+backward time of the fused Triton steps against cuDNN, on one CUDA GPU.

For each cell with a fused step (torch.nn's LSTM, GRU, tanh RNN) and each shape of the grid
B ∈ {1, 8, 64}, T ∈ {64, 1024}, H ∈ {256, 768, 1024} (I = H, one layer, one direction,
float32, TF32 off) it times one training pass — forward, then backward of fixed upstream
gradients on the output and the final states — of

- ``cudnn``  the ``torch.nn`` module on cuda (cuDNN's persistent or per-step kernels),
- ``triton`` :func:`rnnkit.kernels.triton_steps.triton_layer` with the same weights: a
  Python loop over time, one cuBLAS product and one fused pointwise kernel per step,

interleaving the two repetition by repetition, and reports medians, the ratio triton /
cudnn, and the largest difference between the two (output, final states and every
gradient, each relative to that tensor's largest magnitude) from the first repetition.
Usage::

    python benchmarks/triton_steps.py                 # the full grid, writes
                                                      # benchmarks/results/triton_steps.json
    python benchmarks/triton_steps.py --quick         # B 8, T 64, H 256 only, 3 repetitions
    python benchmarks/triton_steps.py --cells lstm --reps 10

Without a CUDA device (or without triton) it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rnnkit  # noqa: E402
from rnnkit.cells import make_cell, torch_twin  # noqa: E402
from rnnkit.files import write_json  # noqa: E402
from rnnkit.kernels import available  # noqa: E402

BATCHES, LENGTHS, HIDDENS = (1, 8, 64), (64, 1024), (256, 768, 1024)
CELLS = ("lstm", "gru", "rnn_tanh")
OUT = Path(__file__).resolve().parent / "results" / "triton_steps.json"


def training_pass(cell_name: str, B: int, T: int, H: int, device: torch.device):
    """Two closures, {"cudnn": …, "triton": …}, each running forward+backward once and
    returning the output, final states and gradients (for the comparison)."""
    from rnnkit.kernels.triton_steps import triton_layer

    cell = make_cell(cell_name)
    twin, options = torch_twin(cell)
    reference = twin(H, H, **options).to(device)
    params = [p.detach().clone().requires_grad_() for p in reference.parameters()]
    x = torch.randn(T, B, H, device=device, requires_grad=True)
    state0 = [(0.5 * torch.randn(B, H, device=device)).requires_grad_()
              for _ in range(cell.num_states)]
    dout = torch.randn(T, B, H, device=device)
    dfinal = [torch.randn(B, H, device=device) for _ in range(cell.num_states)]

    def cudnn():
        hx = tuple(s[None] for s in state0)
        out, final = reference(x, hx if cell.num_states == 2 else hx[0])
        final = tuple(f[0] for f in (final if cell.num_states == 2 else (final,)))
        inputs = [x, *state0, *reference.parameters()]
        grads = torch.autograd.grad([out, *final], inputs, [dout, *dfinal])
        return (out, *final, *grads)

    def triton():
        out, final = triton_layer(cell.native_mode, x, tuple(state0), *params)
        inputs = [x, *state0, *params]
        grads = torch.autograd.grad([out, *final], inputs, [dout, *dfinal])
        return (out, *final, *grads)

    names = ["out", *(f"final_{s}" for s in cell.state_names), "dx",
             *(f"d{s}0" for s in cell.state_names),
             *(f"d{n}" for n, _ in reference.named_parameters())]
    return {"cudnn": cudnn, "triton": triton}, names


def largest_difference(got, want, names) -> tuple[float, str]:
    """max |got − want| / max |want| over the tensors, and the tensor where it is largest."""
    return max(((g - w).abs().max().item() / max(w.abs().max().item(), 1e-30), n)
               for g, w, n in zip(got, want, names))


def time_shape(cell_name, B, T, H, device, reps: int) -> dict:
    runs, names = training_pass(cell_name, B, T, H, device)
    results = {name: run() for name, run in runs.items()}      # warm-up: Triton compiles
    error, where = largest_difference(results["triton"], results["cudnn"], names)
    del results
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():                          # interleaved
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            run()
            torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - started)
    cudnn_ms = 1e3 * statistics.median(times["cudnn"])
    triton_ms = 1e3 * statistics.median(times["triton"])
    return {"cell": cell_name, "B": B, "T": T, "H": H, "cudnn_ms": round(cudnn_ms, 3),
            "triton_ms": round(triton_ms, 3), "ratio": round(triton_ms / cudnn_ms, 3),
            "max_rel_diff": error, "max_rel_diff_in": where, "reps": reps}


def machine(device: torch.device) -> dict:
    import triton
    props = torch.cuda.get_device_properties(device)
    return {"python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "rnnkit": rnnkit.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "tf32": False, "dtype": "float32"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS),
                        help=f"comma-separated, of {','.join(CELLS)}")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per backend")
    parser.add_argument("--quick", action="store_true", help="B 8, T 64, H 256 only, 3 reps")
    parser.add_argument("--out", default=str(OUT), help="where to write the JSON results")
    args = parser.parse_args(argv)
    cells = [c for c in args.cells.split(",") if c]
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        parser.error(f"--cells: unknown {unknown}; expected some of {list(CELLS)}")

    ok, reason = available("cuda")
    if not ok:
        print(f"benchmarks/triton_steps.py: needs a CUDA device and triton: {reason}",
              file=sys.stderr)
        return 2
    from rnnkit.kernels import triton_steps
    if triton_steps.INTERPRETED:
        print("benchmarks/triton_steps.py: TRITON_INTERPRET is set; unset it to time the "
              "compiled kernels", file=sys.stderr)
        return 2

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False       # float32 products on both sides
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    shapes = ([(8, 64, 256)] if args.quick
              else [(B, T, H) for T in LENGTHS for H in HIDDENS for B in BATCHES])
    reps = 3 if args.quick else args.reps
    info = machine(device)
    print(f"{info['gpu']}, torch {info['torch']}, triton {info['triton']}, "
          f"cuDNN {info['cudnn']}, float32, TF32 off; median of {reps}")
    header = (f"{'cell':<9}{'B':>4}{'T':>6}{'H':>6}{'cudnn ms':>11}{'triton ms':>11}"
              f"{'ratio':>8}  max rel diff")
    print(header)
    print("-" * len(header))
    rows = []
    for cell_name in cells:
        for B, T, H in shapes:
            row = time_shape(cell_name, B, T, H, device, reps)
            rows.append(row)
            print(f"{cell_name:<9}{B:>4}{T:>6}{H:>6}{row['cudnn_ms']:>11.2f}"
                  f"{row['triton_ms']:>11.2f}{row['ratio']:>8.2f}  "
                  f"{row['max_rel_diff']:.1e} ({row['max_rel_diff_in']})", flush=True)
            torch.cuda.empty_cache()
    print("ratio: triton / cudnn, forward+backward (below 1: the Triton layer is faster)")
    write_json(args.out, {"machine": info, "reps": reps, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

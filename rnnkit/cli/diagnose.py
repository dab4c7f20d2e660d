"""Looking inside: ``check`` (every cell's hand BPTT), ``diagnose`` (gradient flow, gates,
spectra of a trained model), ``activations`` (one unit over a text), ``bench memory``."""

from __future__ import annotations

import json
from pathlib import Path

from rnnkit.cells import cell_names
from rnnkit.cli.parsing import device_and_json, model_command


def run_check(args) -> int:
    from rnnkit.check import check_all

    rows = check_all()
    if args.json:
        print(json.dumps([{**row.__dict__, "ok": row.ok} for row in rows], indent=2))
    else:
        print(f"{'cell':18s} {'|bptt - autograd|':>18s} {'gradcheck':>10s} "
              f"{'|rnnkit - torch.nn|':>20s}  ok")
        for row in rows:
            twin = "-" if row.torch_nn is None else f"{row.torch_nn:.1e}"
            print(f"{row.cell:18s} {row.bptt_vs_autograd:18.1e} "
                  f"{'pass' if row.gradcheck else 'FAIL':>10s} {twin:>20s}  "
                  f"{'yes' if row.ok else 'NO'}")
        print(f"engine: {_engine_in_use()}")
    return 0 if all(row.ok for row in rows) else 1


def _engine_in_use() -> str:
    """Which implementation of the engine the "bptt" column checked."""
    from rnnkit import compiled

    if compiled.load() is not None:
        fast, slow = compiled.compiled_cells()
        others = (f"the Python engine for {', '.join(slow)}; " if slow else "")
        return (f"the compiled loops for {', '.join(fast)} ({others}"
                f"RNNKIT_COMPILED=0 checks the Python engine for all)")
    return f"the Python engine for every cell (compiled loops: {compiled.unavailable_reason()})"


def _windows(model_dir: str, path: str, length: int, batch_size: int):
    """(model, inputs (T, B), targets (T, B)) of the first B streams of T tokens of a file."""
    import torch

    from rnnkit.data import iter_lines
    from rnnkit.tasks.lm import load_lm

    if length < 2:
        raise ValueError(f"--length: expected >= 2, got {length}")
    if batch_size < 1:
        raise ValueError(f"--batch-size: expected >= 1, got {batch_size}")
    model, tokenizer, _ = load_lm(model_dir)
    ids = []
    for line in iter_lines(path):
        ids.extend(tokenizer.encode_line(line))
        if len(ids) >= (length + 1) * batch_size:
            break
    T = min(length, len(ids) // batch_size - 1)
    if T < 2:
        raise ValueError(f"{path}: too little text for {batch_size} streams")
    data = torch.tensor(ids[:(T + 1) * batch_size]).view(batch_size, T + 1).t()
    return model.eval(), data[:-1], data[1:]


def run_diagnose(args) -> int:
    from rnnkit.diagnostics import (gate_statistics, gradient_flow, plot_gate_statistics,
                                    plot_gradient_flow, recurrent_matrix_statistics)

    model, inputs, targets = _windows(args.model, args.data, args.length, args.batch_size)
    T = inputs.shape[0]

    def loss():                      # the loss of the last step only: what reaches t < T?
        hidden, _ = model(inputs)
        return model.nll(hidden[-1:], targets[-1:]).mean()

    flows = gradient_flow(model, loss)
    plot_gradient_flow({f"{model.config.cell} layer {f.index}": [f] for f in flows}, args.out,
                       title=f"{args.model}: ‖∂L_T/∂h_t‖, loss at the last of {T} steps")
    gates = gate_statistics(model, lambda: model(inputs))
    gates_png = str(Path(args.out).with_name(Path(args.out).stem + "-gates.png"))
    if gates:
        plot_gate_statistics(gates, gates_png, title=f"{args.model}: gate saturation")
    matrices = recurrent_matrix_statistics(model)
    if args.json:
        print(json.dumps({"steps": T, "layers": [f.as_dict() for f in flows],
                          "gates": [g.__dict__ for g in gates],
                          "recurrent_matrices": [m.__dict__ for m in matrices],
                          "plots": [args.out] + ([gates_png] if gates else [])}, indent=2))
    else:
        _print_diagnosis(args, T, flows, gates, gates_png, matrices)
    return 0


def _print_diagnosis(args, T: int, flows, gates, gates_png: str, matrices) -> None:
    print(f"gradient of the last step's loss w.r.t. the hidden state, {T} steps back "
          f"({args.batch_size} streams of {args.data}); plot: {args.out}")
    print(f"{'layer':>5s} {'t=T-1':>10s} {'t=T/2':>10s} {'t=0':>10s} {'ratio 0/(T-1)':>14s}")
    for f in flows:
        print(f"{f.index:5d} {f.h[-1]:10.2e} {f.h[T // 2]:10.2e} {f.h[0]:10.2e} "
              f"{f.h[0] / f.h[-1] if f.h[-1] else float('nan'):14.2e}")
    if gates:
        print(f"\ngate activations (plot: {gates_png})")
        print(f"{'layer':>5s} {'gate':8s} {'mean':>6s} {'< 0.1':>7s} {'> 0.9':>7s}")
        for g in gates:
            print(f"{g.index:5d} {g.gate:8s} {g.mean:6.3f} {g.near_zero:7.1%} {g.near_one:7.1%}")
    print("\nrecurrent matrices, per gate block")
    print(f"{'parameter':24s} {'gate':10s} {'spectral radius':>15s} {'max singular':>13s}")
    for m in matrices:
        print(f"{m.parameter:24s} {m.gate:10s} {m.spectral_radius:15.3f} "
              f"{m.largest_singular_value:13.3f}")


def run_activations(args) -> int:
    from rnnkit.data import iter_lines
    from rnnkit.diagnostics.activations import MAX_CHARS, write_activation_page
    from rnnkit.tasks.lm import load_lm

    if args.max_chars < 0:
        raise ValueError(f"--max-chars: expected an int >= 1 (0: the default {MAX_CHARS}), "
                         f"got {args.max_chars}")
    model, tokenizer, _ = load_lm(args.model)
    text = "\n".join(iter_lines(args.text)) + "\n"
    shown = write_activation_page(model, tokenizer, text, args.out, unit=args.unit,
                                  layer=args.layer, kind=args.kind,
                                  max_chars=args.max_chars or MAX_CHARS)
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    if shown["truncated"]:
        print(f"note: {shown['note']}")
    print(f"wrote {args.out}: {args.kind} unit {args.unit}, {shown['chars']:,} characters, "
          f"values {shown['range'][0]:.2f} .. {shown['range'][1]:.2f}")
    for feature, units in shown["correlations"].items():
        print(f"  {feature:18s} " + ", ".join(f"unit {u} (r={r:+.2f})" for u, r in units))
    return 0


def _parse_list(text: str, name: str, kind=str) -> list:
    try:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected a comma-separated list, got {text!r}") from None
    if not items:
        raise ValueError(f"{name}: expected a comma-separated list, got {text!r}")
    return items


def run_bench_memory(args) -> int:
    from rnnkit.cells import make_cell
    from rnnkit.diagnostics.memory import TASKS, plot_memory_results, train_memory_task

    if args.task not in TASKS:
        raise ValueError(f"--task: expected one of {list(TASKS)}, got {args.task!r}")
    lengths = _parse_list(args.length, "--length", int)
    if min(lengths) < 2:
        raise ValueError(f"--length: expected lengths >= 2, got {args.length!r}")
    cells = _parse_list(args.cells, "--cells")
    for cell in cells:
        make_cell(cell)             # an unknown name lists the registered ones
    if args.steps < 1:
        raise ValueError(f"--steps: expected >= 1, got {args.steps}")
    if args.layers < 1:
        raise ValueError(f"--layers: expected >= 1, got {args.layers}")
    results = []
    for length in lengths:
        for cell in cells:
            r = train_memory_task(args.task, length, cell, steps=args.steps, seed=args.seed,
                                  hidden=args.hidden, layers=args.layers)
            results.append(r)
            if not args.json:
                print(f"{r.task:7s} T={r.length:<4d} {r.cell:5s} {r.metric} {r.value:.4f} "
                      f"(baseline {r.baseline:.4f}) {'solved' if r.solved else '-'} "
                      f"[{r.steps} steps, {r.seconds:.0f} s]", flush=True)
    if args.out:
        plot_memory_results(results, args.out)
    if args.json:
        print(json.dumps([{**r.__dict__, "solved": r.solved} for r in results], indent=2))
    return 0


def add_check(commands) -> None:
    check = commands.add_parser(
        "check", help="verify every cell's hand BPTT against autograd and torch.nn",
        description="Compare each cell's hand-derived backward with autograd of the same "
        "forward (float64, gradcheck) and with torch.nn's twin (float32).")
    device_and_json(check, "print the figures as JSON", device=False)
    check.set_defaults(run=run_check)


def add_commands(commands) -> None:
    """The parsers of diagnose, activations and bench."""
    diag = model_command(commands, "diagnose", "gradient flow through time of a trained model",
                         "Plot the norm of dL/dh_t for every step t and layer, for a loss at "
                         "the last step of a window of FILE, read from the hand BPTT engine.",
                         run_diagnose)
    diag.add_argument("--data", required=True, metavar="FILE", help="UTF-8 text file")
    diag.add_argument("--out", required=True, metavar="PNG", help="plot file to write")
    diag.add_argument("--length", type=int, default=100, help="time steps (100)")
    diag.add_argument("--batch-size", type=int, default=8, help="streams averaged (8)")
    device_and_json(diag, "print the norms as JSON", device=False)

    act = model_command(
        commands, "activations", "colour a text by one hidden unit of a character model",
        "Write an offline HTML page that colours each character of a text by the activation "
        "of one unit (or gate), and list the units most correlated with the position in the "
        "line and with being inside quotes or brackets.", run_activations,
        model_help="character-level model directory")
    act.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file")
    act.add_argument("--out", required=True, metavar="HTML", help="page to write")
    act.add_argument("--unit", type=int, default=0, help="unit index (default 0)")
    act.add_argument("--layer", type=int, default=-1, help="layer index (default: last)")
    act.add_argument("--kind", default="hidden",
                     help="hidden | cell | input | forget | output | reset | update")
    act.add_argument("--max-chars", type=int, default=0,
                     help="longest text shown (default 20000); longer texts are cut, and "
                     "the page says so")
    device_and_json(act, "print the figures as JSON", device=False)
    _add_bench(commands)


def _add_bench(commands) -> None:
    bench = commands.add_parser("bench", help="built-in experiments",
                                description="Built-in experiments.")
    experiments = bench.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    memory = experiments.add_parser(
        "memory", help="long-range memory tasks: where a plain RNN fails",
        description="Train each cell on a long-range memory task generated from a seed, "
        "for a fixed number of steps, and report the test figure against the baseline.")
    memory.add_argument("--task", default="adding", help="adding | copy | reber")
    memory.add_argument("--length", default="50,100,200", help="comma-separated lengths")
    memory.add_argument("--cells", default="rnn,lstm,gru,irnn",
                        help="comma-separated registered cells: " + ", ".join(cell_names())
                        + " (default rnn,lstm,gru,irnn)")
    memory.add_argument("--layers", type=int, default=1, help="recurrent layers (1)")
    memory.add_argument("--steps", type=int, default=1000, help="Adam steps per model")
    memory.add_argument("--hidden", type=int, default=128, help="hidden units (128)")
    memory.add_argument("--seed", type=int, default=0, help="random seed")
    memory.add_argument("--out", metavar="PNG", help="also plot the table")
    device_and_json(memory, "print the results as JSON", device=False)
    memory.set_defaults(run=run_bench_memory)

"""The GPU check: every GPU path of rnnkit, run in one go whenever an NVIDIA GPU is lent to us.

    python benchmarks/gpu_check.py                        # on cuda: under 5 minutes on one GPU
    python benchmarks/gpu_check.py --only cells,resume     # some groups of checks only
    python benchmarks/gpu_check.py --device cpu --quick    # the same checks, small, on the CPU:
                                                           # the test of this script

It prints the machine (torch, CUDA, cuDNN, GPU), then one table row per check — its name,
device, result (pass, FAIL with the error, or skipped with the reason), its figure and its
seconds — and writes them to ``benchmarks/results/gpu_check.json`` (``gpu_check_cpu.json``
for a ``--device cpu`` run, so that a test never overwrites a GPU record; ``--json PATH``
to choose). A check that fails or raises is recorded and the next one runs; the exit
status is 1 if any check FAILs, else 0. Without a CUDA device and without ``--device cpu``
it says so and exits 0.

The checks, by group (``--only``):

cells
    Every registered cell variant (:func:`rnnkit.cells.registry.cell_names`, and each
    non-default value of each cell option that makes a variant of its own) on every
    backend that applies — "native" (PyTorch's fused kernel, cuDNN on a GPU) where the cell
    has a ``torch.nn`` twin, "bptt" (rnnkit's hand-derived engine) and "autograd" (the
    engine's forward under autograd) — forward and backward in float32 on the device,
    against the float64 CPU reference (the "autograd" backend, with the same parameters,
    inputs, initial states and upstream gradients): the output, the final states and the
    gradients of every parameter, the input and the initial states. Each variant runs one
    layer, and two layers bidirectional with variable lengths; the first registered cell
    also runs two layers, bidirectional and variable lengths each alone; each cell with a
    fused kernel also runs a large case (T 64, B 64, H 256: cuDNN picks other kernels for
    larger shapes). The figure is the largest error of any of those tensors relative to
    that tensor's largest magnitude (``max |device − reference| / max |reference|``), and
    the tensor. TF32 is off for the whole run.
train
    Each task of :data:`rnnkit.tasks.TASKS` trained a few dozen steps on the device through
    :func:`rnnkit.tasks.recipe.train` on tiny, learnable data this script writes (dropout
    on), and the language model once more on rnnkit's BPTT engine (backend "bptt") instead
    of the fused kernel; every training loss finite and the last quarter's mean below the
    first quarter's.
resume
    Each task: N steps straight vs N/2 steps then ``resume`` to N (``max_steps``), dropout
    on, so the CUDA generator saved in the train state matters; every tensor of the two
    ``train_state.safetensors`` files (model, optimiser, carried state, generators) equal
    bit for bit. On a mismatch a second straight run tells a resume bug from kernels that
    are not deterministic.
load
    Each task's device-trained directory loaded on the CPU (:func:`rnnkit.tasks.recipe.
    load_model`, which every ``load_*`` of the tasks calls) gives the validation loss it
    gives on the device, within ``LOAD_TOLERANCE`` = 1e-4 (relative; absolute, in nats,
    for a loss below 1: float32 on two devices differs near 1e-6).
use
    Each task's public use of its device-trained model — beam search of the language
    models, labels and tags predicted, sentences translated by beam search — gives on
    the device what it gives on the CPU; sampling from the language model runs on it.
precision
    Each task trained with the train option ``precision`` "bf16" and "fp16": losses finite,
    falling and not bit for bit those of the float32 run (autocast is on), weights saved in
    float32; and the language model's exact resume in each (fp16: with the gradient
    scaler's state). Skipped while TrainConfig has no such field; on the CPU a clear
    refusal (fp16 needs CUDA) is a skip, not a failure.
ddp
    ``python -m rnnkit train lm --nproc 1 --device cuda`` (NCCL on one GPU) as a
    subprocess: it exits 0 and its train state is at the last step. Skipped while
    ``rnnkit train lm --help`` lists no ``--nproc``.

Tolerance of the cell checks (``CELL_TOLERANCE`` = 1e-4 relative): float32 rounds at
6e-8; over the time steps and the sums of the matrix products the error of a correct
float32 run stays near 1e-6 of the tensor's scale (on the CPU at the full sizes: 1e-7 to
6e-6, the layer-normalised LSTM highest), so a correct GPU kernel has a margin of more
than 10; a wrong gate order, a wrong gradient or a lost time step gives errors of order
one, and a stray half-precision or TF32 product (a 10-bit mantissa: 5e-4 a rounding)
lands above it.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

# Deterministic cuBLAS (for the bit-exact resume); it must be set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from _common import RESULTS  # noqa: E402
from tiny_data import tiny_scenes, tiny_speech  # noqa: E402  (the tests' tiny audio, images)
import rnnkit  # noqa: E402
from rnnkit import checkpoint  # noqa: E402
from rnnkit.cells.registry import OPTION_CHOICES, REGISTRY, cell_names, make_cell  # noqa: E402
from rnnkit.tasks import TASKS, recipe  # noqa: E402
from rnnkit.tasks.common import device_of  # noqa: E402
from rnnkit.train import METRICS, TrainConfig, TrainingStopped  # noqa: E402

NO_CUDA = ("no CUDA device: nothing to check (use --device cpu to run the same checks on "
           "the CPU as a test of this script)")
GROUPS = ("cells", "train", "resume", "load", "use", "precision", "ddp")
CELL_TOLERANCE = 1e-4       # relative to each tensor's largest magnitude; see the docstring
LOAD_TOLERANCE = 1e-4       # validation loss, device vs CPU: relative (absolute below 1 nat)
DYNAMIC_TOLERANCE = 1e-3    # dynamic evaluation's perplexity, device vs CPU: relative (each
                            # window's SGD step carries the devices' float32 rounding on)
PRECISIONS = ("bf16", "fp16")


@dataclass(frozen=True)
class Sizes:
    """How big the checks are: the cell checks' shapes, the tasks' hidden size and steps."""

    T: int          # time steps of a cell check
    B: int          # batch
    I: int          # input features
    H: int          # hidden units
    hidden: int     # the tasks' hidden size
    steps: int      # training steps of a task (even: resume cuts it in half)
    sentences: int  # lines of the tiny data
    large: bool = False  # also a large case of each cell with a fused kernel (LARGE's shapes)


FULL = Sizes(T=24, B=16, I=32, H=64, hidden=64, steps=40, sentences=64, large=True)
QUICK = Sizes(T=5, B=3, I=4, H=5, hidden=8, steps=12, sentences=24)
LARGE = dataclasses.replace(FULL, T=64, B=64, I=128, H=256, large=False)


# -- rows --------------------------------------------------------------------------------------

class Skipped(Exception):
    """A check that does not apply here; its message is the reason."""


class CheckFailed(Exception):
    """A check that ran and found something wrong; ``figure`` is what it measured."""

    def __init__(self, message: str, figure: str = ""):
        super().__init__(message)
        self.figure = figure


@dataclass
class Row:
    """One line of the table (and of the JSON)."""

    name: str
    device: str
    result: str             # "pass", "FAIL" or "skipped"
    figure: str = ""
    seconds: float = 0.0
    reason: str = ""        # why it failed or was skipped
    traceback: str = ""     # the full traceback of an unexpected error

    def line(self) -> str:
        result = self.result if self.result == "pass" else f"{self.result}: {self.reason}"
        return f"{self.name:58s} {self.device:6s} {self.figure:34s} {self.seconds:7.2f}  {result}"


# Called with each row as it is made (main: rewrite the JSON, so that a run stopped midway
# leaves every row it finished).
on_row: Callable[[Row], None] = lambda row: None


def run_check(name: str, device: str, check: Callable[[], str]) -> Row:
    """Run ``check`` (which returns its figure) and record how it went; never raises."""
    start = time.perf_counter()
    try:
        figure = check()
        row = Row(name, device, "pass", figure)
    except Skipped as reason:
        row = Row(name, device, "skipped", reason=str(reason))
    except CheckFailed as failure:
        row = Row(name, device, "FAIL", failure.figure, reason=str(failure))
    except Exception as error:      # noqa: BLE001 — any error is this check's failure
        row = Row(name, device, "FAIL", reason=f"{type(error).__name__}: {error}",
                  traceback=traceback.format_exc())
    if device.startswith("cuda") and torch.cuda.is_available():
        try:
            torch.cuda.synchronize()
        except Exception as error:  # noqa: BLE001 — a broken context fails this row
            if row.result == "pass":
                row.result, row.reason = "FAIL", f"{type(error).__name__}: {error}"
    row.seconds = time.perf_counter() - start
    print(row.line(), flush=True)
    on_row(row)
    return row


# -- comparing tensors -------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """The largest relative error over named tensors, and which tensor it was."""

    error: float
    worst: str

    def figure(self) -> str:
        return f"rel err {self.error:.1e} {self.worst}"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual − expected| / max |expected|`` in float64 (inf on a shape mismatch or a
    value that is not finite); 0 when both are all zeros."""
    if actual.shape != expected.shape:
        return math.inf
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not (torch.isfinite(actual).all() and torch.isfinite(expected).all()):
        return math.inf
    if actual.numel() == 0:
        return 0.0
    difference = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    return difference / scale if scale > 0 else (0.0 if difference == 0 else math.inf)


def compare(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
            tolerance: float) -> Comparison:
    """Compare tensors by name; raise CheckFailed naming the worst one if its relative
    error passes ``tolerance`` (or if the names differ)."""
    if set(actual) != set(expected):
        raise CheckFailed(f"different tensors: {sorted(set(actual) ^ set(expected))}")
    errors = {name: relative_error(actual[name], expected[name]) for name in expected}
    worst = max(errors, key=errors.get)
    result = Comparison(errors[worst], worst)
    if not result.error <= tolerance:
        raise CheckFailed(f"{worst}: relative error {result.error:.3g} > {tolerance:g}",
                          result.figure())
    return result


# -- cells × backends --------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """A cell as a registry name and options; ``label`` names it in the table."""

    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name + "".join(f" {k}={v}" for k, v in self.options.items())


def cell_variants() -> list[Variant]:
    """Every registered cell with its defaults, then every non-default value of each of
    its options (a boolean flipped, each choice) — each distinct cell once (by its name)."""
    candidates = [Variant(name) for name in cell_names()]
    for name in cell_names():
        for key, default in REGISTRY[name].options.items():
            values = [not default] if isinstance(default, bool) else OPTION_CHOICES.get(key, ())
            candidates += [Variant(name, {key: value}) for value in values if value != default]
    seen, variants = set(), []
    for variant in candidates:
        cell = make_cell(variant.name, **variant.options)
        if cell.name not in seen:
            seen.add(cell.name)
            variants.append(variant)
    return variants


def backends_of(variant: Variant, device: torch.device | None = None) -> list[str]:
    """The backends a variant runs on: "native" where the cell has a fused kernel, "scan"
    where its state is linear in the previous one, and on a CUDA device with triton
    installed, "triton" where rnnkit.kernels has a fused step for the cell."""
    from rnnkit import kernels
    from rnnkit.scan import supports

    cell = make_cell(variant.name, **variant.options)
    triton = device is not None and device.type == "cuda" and kernels.available("cuda")[0] \
        and kernels.supports(cell)
    return (["native"] if cell.native_mode is not None else []) + ["bptt", "autograd"] + \
        (["scan"] if supports(cell) else []) + (["triton"] if triton else [])


@dataclass(frozen=True)
class Structure:
    """How a cell check's stack is built: layers, directions, variable lengths."""

    label: str
    num_layers: int = 1
    bidirectional: bool = False
    lengths: bool = False


PLAIN = Structure("1 layer")
DEEP = Structure("2 layers bidir lengths", 2, True, True)
ALONE = (Structure("2 layers", num_layers=2), Structure("bidirectional", bidirectional=True),
         Structure("lengths", lengths=True))
DEEP_LARGE = Structure(f"T{LARGE.T} B{LARGE.B} H{LARGE.H}, 2 layers bidir lengths", 2, True, True)


@dataclass
class CellCase:
    """A stack's float32 parameters and inputs, and the float64 reference results."""

    variant: Variant
    structure: Structure
    sizes: Sizes
    state: dict                 # the float32 state_dict every backend loads
    x: torch.Tensor             # (T, B, I) float32
    hx: tuple                   # initial states, (L*D, B, H) float32 each
    lengths: list | None
    upstream: dict              # output name -> its upstream gradient, float64
    reference: dict = field(default_factory=dict)


def make_stack(variant: Variant, structure: Structure, sizes: Sizes, backend: str,
               dtype=torch.float32) -> rnnkit.RecurrentStack:
    return rnnkit.RecurrentStack(sizes.I, sizes.H, structure.num_layers,
                                 bidirectional=structure.bidirectional, cell=variant.name,
                                 cell_options=variant.options, backend=backend, dtype=dtype)


def cell_case(variant: Variant, structure: Structure, sizes: Sizes, seed: int = 0) -> CellCase:
    """Random parameters and inputs (a fixed seed), and the float64 CPU reference."""
    s = sizes
    torch.manual_seed(seed)
    stack = make_stack(variant, structure, sizes, "autograd")
    state = {k: v.detach().clone() for k, v in stack.state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if structure.bidirectional else 1
    x = torch.randn(s.T, s.B, s.I, generator=gen)
    hx = tuple(0.5 * torch.randn(structure.num_layers * directions, s.B, s.H, generator=gen)
               for _ in range(stack.cell.num_states))
    lengths = None
    if structure.lengths:
        lengths = torch.randint(1, s.T + 1, (s.B,), generator=gen)
        lengths[0] = s.T
        lengths = lengths.tolist()
    names = ["output", *(f"{n}_n" for n in stack.cell.state_names)]
    shapes = [(s.T, s.B, s.H * directions), *[h.shape for h in hx]]
    # Upstream gradients rounded to float32, so the reference and the device use the same.
    upstream = {name: torch.randn(shape, generator=gen, dtype=torch.float64).float().double()
                for name, shape in zip(names, shapes)}
    case = CellCase(variant, structure, sizes, state, x, hx, lengths, upstream)
    reference = make_stack(variant, structure, sizes, "autograd", torch.float64)
    reference.load_state_dict(state)
    case.reference = forward_and_gradients(reference, case, torch.device("cpu"), torch.float64)
    return case


def forward_and_gradients(stack: rnnkit.RecurrentStack, case: CellCase, device: torch.device,
                          dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The stack's output, final states, and the gradients of ``Σ <result, upstream>``
    with respect to every parameter, the input and the initial states: {name: float64 CPU
    tensor}. The stack stays in training mode (cuDNN's backward needs it; no dropout)."""
    x = case.x.to(device, dtype).requires_grad_()
    hx = tuple(h.to(device, dtype).requires_grad_() for h in case.hx)
    output, final = stack(x, hx if len(hx) > 1 else hx[0], lengths=case.lengths)
    finals = final if isinstance(final, tuple) else (final,)
    results = dict(zip(case.upstream, (output, *finals)))
    loss = sum((value * case.upstream[name].to(device, dtype)).sum()
               for name, value in results.items())
    params = dict(stack.named_parameters())
    leaves = {"d input": x, **{f"d {n}_0": h for n, h in zip(stack.cell.state_names, hx)},
              **{f"d {n}": p for n, p in params.items()}}
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    results.update({name: torch.zeros_like(leaf) if g is None else g
                    for (name, leaf), g in zip(leaves.items(), grads)})
    return {name: value.detach().to("cpu", torch.float64) for name, value in results.items()}


def check_cell(case: CellCase, backend: str, device: torch.device) -> str:
    stack = make_stack(case.variant, case.structure, case.sizes, backend)
    stack.load_state_dict(case.state)
    stack.to(device)
    if stack.resolved_backend() != backend:
        raise CheckFailed(f"asked for backend {backend!r}, runs {stack.resolved_backend()!r}")
    results = forward_and_gradients(stack, case, device, torch.float32)
    return compare(results, case.reference, CELL_TOLERANCE).figure()


def cell_rows(device: torch.device, sizes: Sizes) -> list[Row]:
    rows = []
    variants = cell_variants()
    for variant in variants:
        cases = [(PLAIN, sizes), (DEEP, sizes)]
        if variant == variants[0]:
            cases += [(structure, sizes) for structure in ALONE]
        if sizes.large and "native" in backends_of(variant):    # cuDNN's larger kernels
            cases.append((DEEP_LARGE, LARGE))
        for structure, shapes in cases:
            label = f"cell {variant.label}, {structure.label}"
            try:
                case = cell_case(variant, structure, shapes)
            except Exception as error:  # noqa: BLE001 — the reference itself failed
                rows.append(run_check(f"{label}: reference", "cpu", _raiser(error)))
                continue
            for backend in backends_of(variant, device):
                if backend == "triton" and structure.lengths:      # dense batches only
                    continue
                rows.append(run_check(f"{label} [{backend}]", device.type,
                                      lambda c=case, b=backend: check_cell(c, b, device)))
    return rows


def _raiser(error: Exception) -> Callable[[], str]:
    def check() -> str:
        raise error
    return check


# -- tiny data ---------------------------------------------------------------------------------

DETERMINERS, NOUNS, VERBS = ("the", "a"), ("cat", "dog", "mat", "log"), ("sat", "ran", "slept")
TAGS = {**{w: "DET" for w in DETERMINERS}, **{w: "NOUN" for w in NOUNS},
        **{w: "VERB" for w in VERBS}, "on": "ADP"}


def tiny_data(root: Path, n: int, seed: int = 0) -> dict[str, str]:
    """Tiny, learnable data of every task in ``root``: "text" (plain lines), "labelled"
    (``label<TAB>text``; the label says whether a cat is in it), "tagged" (``word<TAB>tag``
    sentences), "source" and "target" (aligned lines; the target is the source in capitals)."""
    rng = random.Random(seed)
    sentences = [[rng.choice(DETERMINERS), rng.choice(NOUNS), rng.choice(VERBS), "on",
                  rng.choice(DETERMINERS), rng.choice(NOUNS)][:rng.randint(3, 6)]
                 for _ in range(n)]
    lines = [" ".join(s) for s in sentences]

    def write(name: str, rows) -> str:
        path = root / name
        path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
        return str(path)

    return {"text": write("text.txt", lines),
            "labelled": write("labelled.tsv", [f"{'cat' if 'cat' in s else 'other'}\t{line}"
                                               for s, line in zip(sentences, lines)]),
            "tagged": write("tagged.tsv", [row for s in sentences
                                           for row in [f"{w}\t{TAGS[w]}" for w in s] + [""]]),
            "source": write("pairs.src", lines),
            "target": write("pairs.tgt", [line.upper() for line in lines]),
            "scenes": tiny_scenes(root, n),
            "speech": tiny_speech(root)}


def task_setup(task: str, files: dict[str, str], hidden: int) -> tuple[object, dict]:
    """(data config, model options) of ``task`` on the tiny data: small, with dropout."""
    pairs = f"{files['source']},{files['target']}"
    # Two layers where a task has them: the classifier's and tagger's encoders then run
    # dropout between layers inside the fused kernel (cuDNN's own dropout state on a GPU).
    small = {"hidden_size": hidden, "dropout": 0.2}
    setups = {
        "lm": ({"data": files["text"], "level": "word", "batch_size": 4, "bptt": 8},
               {**small, "num_layers": 2}),
        "classifier": ({"train": files["labelled"], "valid": files["labelled"], "batch_size": 8},
                       {**small, "embedding_size": hidden, "num_layers": 2}),
        "tagger": ({"train": files["tagged"], "valid": files["tagged"], "batch_size": 8},
                   {**small, "embedding_size": hidden, "num_layers": 2,
                    "char_embedding_size": 8, "char_hidden_size": 8}),
        "translator": ({"train": pairs, "valid": pairs, "level": "word", "min_count": 1,
                        "batch_size": 8}, {**small, "embedding_size": hidden}),
        "recognizer": ({"data": files["speech"], "sample_rate": 8000, "num_mel_bins": 8,
                        "batch_size": 4}, {**small}),
        "captioner": ({"data": files["scenes"], "image_size": 16, "batch_size": 8},
                      {**small, "embedding_size": hidden, "conv_channels": 4,
                       "conv_layers": 2}),
        "conditioned_lm": ({"train": files["labelled"], "valid": files["labelled"],
                            "batch_size": 8}, {**small}),
    }
    if task not in setups:
        raise CheckFailed(f"no tiny data for the task {task!r}: add it to task_setup()")
    data, model = setups[task]
    return TASKS[task].data_config(**data), model


def task_outputs(task: str, directory: Path, files: dict[str, str], device: str):
    """What a trained model of ``task`` gives through its public use on ``device``, with
    no randomness (argmax labels and tags, beam search), so two devices can be compared."""
    from rnnkit.tasks import (captioner, classifier, conditioned_lm, lm, recognizer, tagger,
                              translator)

    first_lines = Path(files["source"]).read_text(encoding="utf-8").splitlines()[:8]
    uses = {
        "lm": lambda: lm.generate(directory, "the", max_tokens=12, beam=3, device=device),
        "classifier": lambda: [row["label"] for row in
                               classifier.predict_file(directory, files["labelled"],
                                                       device=device)],
        "tagger": lambda: tagger.predict_file(directory, files["tagged"], device=device),
        "translator": lambda: translator.translate_lines(directory, first_lines, beam=3,
                                                         device=device),
        "conditioned_lm": lambda: conditioned_lm.generate(directory, "cat", max_tokens=12,
                                                          beam=3, device=device),
        "recognizer": lambda: recognizer.transcribe_files(
            directory, [str(Path(files["speech"]).parent / f"speech{k}.wav") for k in range(4)],
            beam=1, device=device),
        "captioner": lambda: captioner.caption_images(
            directory, [str(Path(files["scenes"]) / f"{k}.png") for k in range(4)], beam=3,
            device=device),
    }
    if task not in uses:
        raise CheckFailed(f"no use of the task {task!r} to check: add it to task_outputs()")
    return uses[task]()


def _quiet(*_):
    pass


def train_task(task: str, files: dict, out: Path, sizes: Sizes, device: torch.device,
               steps: int | None = None, model: dict | None = None, **train) -> dict:
    """Train ``task`` on the tiny data into ``out`` through the recipe (``model``: more
    model options, ``train``: more train options); its summary."""
    data_cfg, model_options = task_setup(task, files, sizes.hidden)
    model_options.update(model or {})
    train_cfg = {"max_steps": steps or sizes.steps, "epochs": 1000, "optimizer": "adam",
                 "lr": 0.01, "lr_decay": 1.0, "log_every": 1, "progress": False, "seed": 1,
                 **train}
    return recipe.train(TASKS[task], data_cfg, model_options, train_cfg, out,
                        device=str(device), log=_quiet)


def train_losses(out: Path) -> list[float]:
    """The training loss of every step, from the run's metrics file (log_every 1)."""
    entries = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    return [e["loss"] for e in entries if e["split"] == "train"]


def check_loss_falls(out: Path) -> str:
    """Every training loss finite, and the last quarter's mean below the first quarter's."""
    losses = train_losses(out)
    if not losses or not all(math.isfinite(v) for v in losses):
        raise CheckFailed(f"training losses not all finite: {losses}")
    quarter = max(1, len(losses) // 4)
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    figure = f"loss {first:.3f} -> {last:.3f}"
    if not last < first:
        raise CheckFailed(f"the loss did not fall in {len(losses)} steps", figure)
    return figure


# -- the tasks: train, resume, load, use, precision --------------------------------------------

class TaskChecks:
    """The checks that train the tasks, sharing the tiny data and the trained directories."""

    def __init__(self, root: Path, sizes: Sizes, device: torch.device):
        self.root, self.sizes, self.device = root, sizes, device
        (root / "data").mkdir()
        self.files = tiny_data(root / "data", sizes.sentences)
        self.trained: dict[str, Path] = {}

    def train(self, task: str) -> str:
        out = self.root / task / "trained"
        train_task(task, self.files, out, self.sizes, self.device)
        figure = check_loss_falls(out)
        self.trained[task] = out
        return figure

    def train_on_engine(self, task: str) -> str:
        """Training through rnnkit's own BPTT engine (backend "bptt") instead of the fused
        kernel that "auto" picks for the task's LSTM."""
        out = self.root / task / "trained-bptt"
        train_task(task, self.files, out, self.sizes, self.device, model={"backend": "bptt"})
        backend = checkpoint.read_config(out, task)["model"].get("backend")
        if backend != "bptt":
            raise CheckFailed(f"the model was saved with backend {backend!r}, not 'bptt'")
        return check_loss_falls(out)

    def resume(self, task: str, **train) -> str:
        """N steps straight vs N/2, then resumed to N: the same train state, bit for bit
        (``train``: more train options of both runs, e.g. a precision)."""
        half, tag = self.sizes.steps // 2, "".join(f"-{v}" for v in train.values())
        straight = self.root / task / f"straight{tag}"
        cut = self.root / task / f"cut{tag}"
        train_task(task, self.files, straight, self.sizes, self.device, **train)
        train_task(task, self.files, cut, self.sizes, self.device, steps=half, **train)
        summary = recipe.train(TASKS[task], None, None, None, cut, resume=True,
                               train_overrides={"max_steps": self.sizes.steps},
                               device=str(self.device), log=_quiet)
        if summary["step"] != self.sizes.steps:
            raise CheckFailed(f"resumed run ended at step {summary['step']}, expected "
                              f"{self.sizes.steps}")
        difference = train_state_difference(straight, cut)
        if difference is None:
            count = len(checkpoint.load_tensors(straight / checkpoint.TRAIN_STATE)[0])
            return f"bit-exact, {count} tensors"
        again = self.root / task / f"straight-again{tag}"
        train_task(task, self.files, again, self.sizes, self.device, **train)
        if train_state_difference(straight, again) is not None:
            raise CheckFailed(f"{difference}; but two straight runs differ too: the kernels "
                              f"are not deterministic on {self.device} (not a resume bug)")
        raise CheckFailed(f"resumed run differs: {difference}")

    def load_on_cpu(self, task: str) -> str:
        out = self.trained.get(task)
        if out is None:
            raise Skipped("no trained model (its train check failed or did not run)")
        on_device = valid_loss(task, out, self.device)
        on_cpu = valid_loss(task, out, torch.device("cpu"))
        difference = abs(on_device - on_cpu) / max(abs(on_cpu), 1.0)
        figure = f"{on_device:.6f} vs cpu {on_cpu:.6f}"
        if not difference <= LOAD_TOLERANCE:
            raise CheckFailed(f"valid loss {on_device!r} on {self.device}, {on_cpu!r} on the "
                              f"CPU: difference {difference:.3g} > {LOAD_TOLERANCE:g}", figure)
        return figure

    def use(self, task: str) -> str:
        """The task's public use (generation, beam search, prediction) of the device-trained
        model on the device gives what it gives on the CPU; for the language model, sampling
        on the device runs too."""
        out = self.trained.get(task)
        if out is None:
            raise Skipped("no trained model (its train check failed or did not run)")
        on_device = task_outputs(task, out, self.files, str(self.device))
        on_cpu = task_outputs(task, out, self.files, "cpu")
        if on_device != on_cpu:
            raise CheckFailed(f"on {self.device}: {on_device!r:.200}; on the CPU: "
                              f"{on_cpu!r:.200}")
        if task == "lm":
            from rnnkit.tasks.lm import generate

            sample = generate(out, "the", max_tokens=12, device=str(self.device), seed=1)
            if not isinstance(sample, str):
                raise CheckFailed(f"sampling gave {type(sample).__name__}, not text")
        return "same as cpu: " + " ".join(str(on_device).split())[:21]

    def dynamic_evaluation(self) -> str:
        """The language model's dynamic evaluation (a backward and an SGD step per window,
        the model in eval mode: cuDNN refuses that backward, rnnkit's engine does not) on
        the device gives the perplexity it gives on the CPU (float32 on both: within
        DYNAMIC_TOLERANCE, relative)."""
        from rnnkit.tasks.lm import evaluate_file

        out = self.trained.get("lm")
        if out is None:
            raise Skipped("no trained model (its train check failed or did not run)")
        ppl = {dev: evaluate_file(out, self.files["text"], dynamic=0.5, device=dev)["ppl"]
               for dev in (str(self.device), "cpu")}
        difference = abs(ppl[str(self.device)] - ppl["cpu"]) / ppl["cpu"]
        figure = f"ppl {ppl[str(self.device)]:.4f} vs cpu {ppl['cpu']:.4f}"
        if not difference <= DYNAMIC_TOLERANCE:
            raise CheckFailed(f"difference {difference:.3g} > {DYNAMIC_TOLERANCE:g}", figure)
        return figure

    def precision(self, task: str, precision: str) -> str:
        """Training with ``precision``: losses finite and falling, and not those of the
        float32 run (autocast is on), weights saved in float32."""
        out = self.root / task / f"precision-{precision}"
        with precision_refusals(precision, self.device):
            train_task(task, self.files, out, self.sizes, self.device, precision=precision)
        figure = check_loss_falls(out)
        if task in self.trained and train_losses(out) == train_losses(self.trained[task]):
            raise CheckFailed(f"the losses of the float32 run, bit for bit: {precision} "
                              f"changed nothing", figure)
        tensors, _ = checkpoint.load_tensors(out / checkpoint.WEIGHTS)
        low = sorted(name for name, value in tensors.items()
                     if value.is_floating_point() and value.dtype != torch.float32)
        if low:
            raise CheckFailed(f"weights saved in lower precision: {low[:3]}", figure)
        return figure

    def resume_with_precision(self, task: str, precision: str) -> str:
        """Exact resume with ``precision`` (fp16: the gradient scaler's state too)."""
        with precision_refusals(precision, self.device):
            return self.resume(task, precision=precision)


@contextmanager
def precision_refusals(precision: str, device: torch.device):
    """Skip a check of ``precision`` while TrainConfig has no such option, or where the
    library refuses it on the CPU (fp16) with a clear error."""
    if "precision" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        raise Skipped("no precision option")
    try:
        yield
    except ValueError as error:
        refused = (device.type == "cpu" and not isinstance(error, TrainingStopped)
                   and "precision" in str(error))
        if refused:
            raise Skipped(f"refused on the CPU: {error}") from None
        raise


def check_native_under_bf16(device: torch.device, sizes: Sizes) -> str:
    """A fused-kernel LSTM layer under bf16 autocast on CUDA gives exactly its float32
    result: cuDNN's RNN would cast to float16 whatever the autocast dtype, so rnnkit runs
    it in float32 there (rnnkit.native)."""
    if device.type != "cuda":
        raise Skipped("CUDA autocast only")
    torch.manual_seed(0)
    layer = rnnkit.LSTM(sizes.I, sizes.H, backend="native").to(device)
    x = torch.randn(sizes.T, sizes.B, sizes.I, device=device)
    want, _ = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got, (h, c) = layer(x)
    if got.dtype != torch.float32 or h.dtype != torch.float32:
        raise CheckFailed(f"output {got.dtype}, state {h.dtype}: expected float32")
    if not torch.equal(got, want):
        error = (got - want).abs().max().item()
        raise CheckFailed(f"differs from float32 by {error:.3g}", f"max error {error:.3g}")
    return "float32, equal"


def check_one_layer_dropout_draws_nothing(device: torch.device, sizes: Sizes) -> str:
    """A one-layer fused stack given dropout (which applies between layers: none here)
    draws nothing from the device's generator in training — a draw there would put a
    resumed run's later masks out of step with a straight run's."""
    torch.manual_seed(0)
    layer = rnnkit.LSTM(sizes.I, sizes.H, num_layers=1, dropout=0.5,
                        backend="native").to(device).train()
    x = torch.randn(sizes.T, sizes.B, sizes.I, device=device)
    state = (torch.cuda.get_rng_state(device) if device.type == "cuda"
             else torch.get_rng_state())
    layer(x)[0].sum().backward()
    after = (torch.cuda.get_rng_state(device) if device.type == "cuda"
             else torch.get_rng_state())
    if not torch.equal(state, after):
        raise CheckFailed("the generator moved")
    return "no draw"


def train_state_difference(first: Path, second: Path) -> str | None:
    """None if the two runs' train states hold the same tensors bit for bit and the same
    step, else what differs first."""
    a, meta_a = checkpoint.load_tensors(first / checkpoint.TRAIN_STATE)
    b, meta_b = checkpoint.load_tensors(second / checkpoint.TRAIN_STATE)
    if meta_a["step"] != meta_b["step"]:
        return f"step {meta_a['step']} vs {meta_b['step']}"
    if set(a) != set(b):
        return f"different tensors: {sorted(set(a) ^ set(b))[:5]}"
    for name in a:
        if a[name].dtype != b[name].dtype or not torch.equal(a[name], b[name]):
            delta = ((a[name].double() - b[name].double()).abs().max().item()
                     if a[name].is_floating_point() and a[name].shape == b[name].shape else "?")
            return f"tensor {name} differs (max |difference| {delta})"
    return None


def valid_loss(task: str, out: Path, device: torch.device) -> float:
    """The validation loss of the model in ``out`` on ``device``, measured as the recipe
    measures it at the end of training: the run's data prepared as on resume, the model
    loaded by :func:`rnnkit.tasks.recipe.load_model`, the task's own evaluation."""
    spec = TASKS[task]
    data_cfg, options, train_cfg = recipe.read_run(out, spec)
    prepared = spec.prepare(data_cfg, options, out, resume=True, log=_quiet)
    model = recipe.load_model(spec, out, checkpoint.read_config(out, spec.name), str(device),
                              **prepared.model_kwargs)
    if next(model.parameters()).device.type != device.type:
        raise CheckFailed(f"load_model(device={str(device)!r}) left the model on "
                          f"{next(model.parameters()).device}")
    with torch.no_grad():
        return float(prepared.make_task(model, train_cfg.seed, device).evaluate("valid")["loss"])


# -- DDP through the command line --------------------------------------------------------------

def check_ddp(root: Path, files: dict, device: torch.device, timeout: float) -> str:
    """``rnnkit train lm --nproc 1`` in a subprocess: exit 0 and a train state at step 20."""
    if "--nproc" not in train_lm_help():
        raise Skipped("no --nproc")
    command = [sys.executable, "-m", "rnnkit", "train", "lm"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = root / "ddp"
    args = ["--nproc", "1", "--device", device.type, "--data", files["text"], "--level", "word",
            "--hidden", "16", "--layers", "1", "--batch-size", "4", "--bptt", "8",
            "--max-steps", "20", "--out", str(out), "--no-progress"]
    run = subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=timeout)
    if run.returncode != 0:
        raise CheckFailed(f"exit {run.returncode}: {(run.stderr or run.stdout).strip()[-800:]}")
    _, meta = checkpoint.load_tensors(out / checkpoint.TRAIN_STATE)
    if meta["step"] != 20:
        raise CheckFailed(f"the train state is at step {meta['step']}, expected 20")
    return "20 steps, exit 0"


def train_lm_help() -> str:
    """What ``rnnkit train lm --help`` prints (run in this process: no second start-up)."""
    from rnnkit.cli import main as rnnkit_main

    text = io.StringIO()
    with redirect_stdout(text):
        try:
            rnnkit_main(["train", "lm", "--help"])
        except SystemExit:
            pass
    return text.getvalue()


# -- the run -----------------------------------------------------------------------------------

def use_full_float32() -> dict:
    """Turn TF32 off for matrix products and cuDNN (its RNNs and convolutions); the flags
    as they now read. A torch with per-backend precisions (2.9 and later) is set through
    those alone: it refuses a mix of them and the legacy ``allow_tf32`` flags."""
    backends = {"cuda.matmul": torch.backends.cuda.matmul,
                "cudnn.rnn": getattr(torch.backends.cudnn, "rnn", None),
                "cudnn.conv": getattr(torch.backends.cudnn, "conv", None)}
    if all(hasattr(b, "fp32_precision") for b in backends.values()):
        for backend in backends.values():
            backend.fp32_precision = "ieee"
        return {f"{name}.fp32_precision": b.fp32_precision for name, b in backends.items()}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def machine(device: torch.device) -> dict:
    """What the run ran on."""
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "rnnkit": rnnkit.__version__, "platform": platform.platform(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available() else None,
            "cpu_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    gpus=torch.cuda.device_count())
    return info


def run_all(device: torch.device, sizes: Sizes, groups=GROUPS) -> list[Row]:
    """Every check of ``groups`` on ``device``: the rows, in order."""
    rows: list[Row] = []
    dev = device.type
    if "cells" in groups:
        rows += cell_rows(device, sizes)
    with tempfile.TemporaryDirectory(prefix="rnnkit-gpu-check-") as tmp:
        tasks = TaskChecks(Path(tmp), sizes, device)
        if {"train", "load", "use"} & set(groups):
            rows += [run_check(f"train {task}", dev, lambda t=task: tasks.train(t))
                     for task in TASKS]
        if "train" in groups:
            rows.append(run_check("train lm backend=bptt", dev,
                                  lambda: tasks.train_on_engine("lm")))
        if "resume" in groups:
            rows += [run_check(f"resume {task}", dev, lambda t=task: tasks.resume(t))
                     for task in TASKS]
            rows.append(run_check("one-layer dropout draws nothing", dev,
                                  lambda: check_one_layer_dropout_draws_nothing(device, sizes)))
        if "load" in groups:
            rows += [run_check(f"load {task} on cpu", dev, lambda t=task: tasks.load_on_cpu(t))
                     for task in TASKS]
        if "use" in groups:
            rows += [run_check(f"use {task}", dev, lambda t=task: tasks.use(t))
                     for task in TASKS]
            rows.append(run_check("use lm dynamic evaluation", dev, tasks.dynamic_evaluation))
        if "precision" in groups:
            rows += [run_check(f"precision {p} {task}", dev,
                               lambda t=task, p=p: tasks.precision(t, p))
                     for p in PRECISIONS for task in TASKS]
            rows += [run_check(f"resume {p} lm", dev,
                               lambda p=p: tasks.resume_with_precision("lm", p))
                     for p in PRECISIONS]
            rows.append(run_check("native LSTM under bf16 autocast", dev,
                                  lambda: check_native_under_bf16(device, sizes)))
        if "ddp" in groups:
            timeout = 120 if sizes == QUICK else 180
            rows.append(run_check("ddp lm --nproc 1", dev,
                                  lambda: check_ddp(Path(tmp), tasks.files, device, timeout)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda",
                        help="cuda (default), cuda:N, or cpu to test this script")
    parser.add_argument("--quick", action="store_true", help="everything smaller (the test)")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated groups of checks: {', '.join(GROUPS)} "
                        f"(load and use train the tasks first)")
    parser.add_argument("--json", default="", help="where to write the results (default "
                        "benchmarks/results/gpu_check.json, gpu_check_cpu.json on the CPU)")
    args = parser.parse_args(argv)
    groups = [g for g in args.only.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; expected some of {list(GROUPS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    try:
        device = device_of(args.device)
    except ValueError as error:
        parser.error(str(error))
    sizes = QUICK if args.quick else FULL
    flags = use_full_float32()
    info = machine(device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"float32 flags: {flags}; sizes: {sizes}")
    print(f"{'check':58s} {'device':6s} {'figure':34s} {'seconds':>7s}  result")
    path = Path(args.json) if args.json else \
        RESULTS / ("gpu_check_cpu.json" if device.type == "cpu" else "gpu_check.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    start, done = time.perf_counter(), []

    def write(finished: bool) -> None:
        failed = sum(row.result == "FAIL" for row in done)
        results = {"machine": info, "float32_flags": flags, "sizes": dataclasses.asdict(sizes),
                   "tolerances": {"cells": CELL_TOLERANCE, "load": LOAD_TOLERANCE,
                                  "dynamic": DYNAMIC_TOLERANCE},
                   "groups": groups, "finished": finished,
                   "seconds": time.perf_counter() - start, "failed": failed,
                   "rows": [dataclasses.asdict(row) for row in done]}
        path.write_text(json.dumps(results, indent=2, default=str))

    def record(row: Row) -> None:
        done.append(row)
        write(False)

    global on_row
    on_row = record
    rows = run_all(device, sizes, groups)
    write(True)
    seconds = time.perf_counter() - start
    failed = [row for row in rows if row.result == "FAIL"]
    skipped = [row for row in rows if row.result == "skipped"]
    print(f"{len(rows)} checks in {seconds:.0f} s: {len(rows) - len(failed) - len(skipped)} "
          f"pass, {len(failed)} FAIL, {len(skipped)} skipped")
    for row in failed:
        print(f"FAIL {row.name}: {row.reason}")
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

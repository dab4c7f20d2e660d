"""A compiled CPU path for the hand-BPTT engine: a layer's whole time loop in one C++ call.

The per-step work of :mod:`rnnkit.bptt` costs about ten PyTorch calls per step; here a step
is one matrix product plus one vectorised pass over its elements, and the loop over time
runs in C++. Same packed layout, same variable-length and reverse semantics, same results
as the Python engine, which stays the readable reference and the fallback.

Layout: one file pair per family of cells — ``<family>.cpp`` (the loops, forward and hand
backward) beside ``<family>.py`` (a :class:`~rnnkit.compiled.kernel.Kernel`: which cells,
and the calls) — ``common.h`` (what the loops share: the products, the vectorisable
activations, the buffers), ``module.cpp`` (the one extension module) and this file (the
build, the autograd Function, the choice between these loops and the Python engine).

The float32 products — the input projection, the steps', the weight and input gradients —
run through oneDNN (the library under ``torch.nn.LSTM`` on the CPU, reached as
``torch.ops.mkldnn._linear_pointwise``; the forward's recurrent weight packed once per
sequence; a small step weight, <= 1 MiB, through oneDNN's brgemm micro-kernel instead): on
an AMD CPU with AVX-512 oneDNN is 2-3x faster than the MKL sgemm behind ``torch.mm``.
float64 (and a torch without oneDNN) uses ``at::mm``. ``load().linear(x, w, bias)`` is the
product ``x @ w.T + bias`` as the loops run it.

Covered: the cells of :data:`KERNELS` — every registered cell, and zoneout on the LSTM —
float32 and float64 on the CPU; training
(:class:`CompiledRecurrentFunction`) and inference (no caches written when no gradient is
wanted). :func:`rnnkit.autograd.recurrent_bptt` — the "bptt" backend — takes this path
wherever :func:`applies` says it can, and the Python engine everywhere else; backend "auto"
takes it over PyTorch's kernel where :func:`prefers` says it is faster.

The extension is built on first use with ``torch.utils.cpp_extension.load`` and cached in
``$XDG_CACHE_HOME/rnnkit/compiled`` (``~/.cache/…``), one folder per copy of rnnkit, the
flags, the torch and Python versions and the CPU (``-march=native``), where ninja rebuilds
what changed; a build prints one line (about 40 s here, once). ``RNNKIT_COMPILED=0``
turns it off. :func:`load` never raises: it gives None and :func:`unavailable_reason` says
why. Large buffers freed by the loops are kept for the next call (``load().buffers_held()``,
``load().release_buffers()``; at most 1 GiB).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import threading
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.bptt import OBSERVERS, projection_bias
from rnnkit.cells.base import Cell, State
from rnnkit.compiled import diagonal, elman, gru, layernorm, lstm
from rnnkit.compiled.kernel import Grads, Kernel

# Every family's kernel (its C++ loops in <family>.cpp, registered by module.cpp)
KERNELS: list[Kernel] = [*lstm.KERNELS, *gru.KERNELS, *elman.KERNELS, *layernorm.KERNELS,
                         *diagonal.KERNELS]
FOLDER = Path(__file__).parent
SOURCES = sorted(FOLDER.glob("*.cpp"))          # module.cpp and one file per family
HEADERS = sorted(FOLDER.glob("*.h"))
# -march=native: this machine's vector width; -fno-trapping-math lets the element loops
# (floor, the exp's range reduction) vectorise and changes no result; -fopenmp compiles
# at::parallel_for's pragmas (the runtime is torch's own libgomp, already loaded).
CFLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"]
_module = None
_reason: str | None = None
_tried = False
_LOCK = threading.Lock()


def _cpu() -> str:
    """The CPU, as -march=native sees it: its model and flags where Linux says them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(line for line in lines if line.startswith(("model name", "flags"))
                       )[:4096] or platform.machine()
    except OSError:
        return platform.machine()


def cache_dir() -> Path:
    """Where the built extension lives: one folder per installed copy of rnnkit (its
    path), torch and Python version, CPU and flags. Within it ninja rebuilds what changed:
    the objects whose source (or common.h) is newer than they are, then the module."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(b"\0".join([str(FOLDER.resolve()).encode(),
                                     torch.__version__.encode(),
                                     sys.version.encode(), _cpu().encode(),
                                     " ".join(CFLAGS).encode()])).hexdigest()[:16]
    return base / "rnnkit" / "compiled" / key


def load():
    """The compiled module, built once and cached; None (see :func:`unavailable_reason`)
    when ``RNNKIT_COMPILED=0`` or when it cannot be built (no compiler, a failed build).
    Thread-safe: a thread that arrives during the build waits for it."""
    global _reason
    if os.environ.get("RNNKIT_COMPILED", "1") == "0":
        _reason = "turned off by RNNKIT_COMPILED=0"
        return None
    if not _tried:
        with _LOCK:                     # one build; other threads wait for its result
            if not _tried:
                _build()
    if _module is not None:
        _reason = None
    return _module


@contextlib.contextmanager
def _build_lock(folder: Path):
    """One build at a time in ``folder``, by a lock the system releases when its process
    dies. Inside it, a ``lock`` file left by PyTorch's own build lock (``FileBaton``: a plain
    file, never removed when a build is killed, say by Ctrl-C during the first build) is
    stale and removed — else every later load would wait for it forever."""
    try:
        import fcntl
    except ImportError:                 # not POSIX: PyTorch's lock alone (a stale one there
        yield                           # must be removed by hand)
        return
    with open(folder / "rnnkit.lock", "w") as guard:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
        except OSError:                 # a file system without flock (some NFS): no guard
            yield
            return
        try:
            (folder / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def _build() -> None:
    """Build (or find built) the extension: sets the module or the reason it failed."""
    global _module, _reason, _tried
    try:
        from torch.utils import cpp_extension

        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        name = "rnnkit_steps_" + folder.name
        with _build_lock(folder):
            # said inside the lock, by the one process that builds (the processes of a
            # distributed run all load the module; the others then find it built)
            built = [f.stat().st_mtime for f in folder.glob(name + "*.so")]
            if not built or max(f.stat().st_mtime for f in SOURCES + HEADERS) > max(built):
                print(f"rnnkit: building the compiled recurrent loops once (about 40 s), "
                      f"cached in {folder}", file=sys.stderr, flush=True)
            _module = cpp_extension.load(name, [str(f) for f in SOURCES], extra_cflags=CFLAGS,
                                         build_directory=str(folder), verbose=False)
    except Exception as error:          # no compiler, no ninja, a failed build: fall back
        lines = str(error).strip().splitlines() or [type(error).__name__]
        said = ([line for line in lines if "error:" in line.lower()]
                or [line for line in lines if "error" in line.lower()] or lines)
        _reason = f"the compiled extension could not be built: {said[0][:300]}"
        _module = None
    _tried = True                       # only now: a thread arriving earlier waits above


def unavailable_reason() -> str | None:
    """Why :func:`load` gave None (None when it has not, or has not been called)."""
    return _reason


def kernel_of(cell: Cell) -> Kernel | None:
    """The kernel whose compiled loops compute ``cell`` (see :mod:`rnnkit.compiled.kernel`),
    or None."""
    return next((kernel for kernel in KERNELS if kernel.accepts(cell)), None)


def register(kernel: Kernel) -> Kernel:
    """Add ``kernel`` — compiled loops of your own for a cell of your own (see
    :mod:`rnnkit.compiled.kernel` and ``docs/custom_cell.md``) — asked before rnnkit's own
    kernels; returns it. Its forward and backward receive rnnkit's module (its products:
    ``m.linear``, ``m.transposed``) and may call an extension of their own."""
    if not isinstance(kernel, Kernel):
        raise TypeError(f"register: expected an rnnkit.compiled.kernel.Kernel, got "
                        f"{type(kernel).__name__}")
    KERNELS.insert(0, kernel)
    return kernel


def compiled_cells() -> tuple[list[str], list[str]]:
    """The registered cell names (``rnn`` counted as ``rnn_tanh``) that the compiled loops
    compute, and those that run on the Python engine."""
    from rnnkit.cells import cell_names, make_cell

    seen: dict[str, bool] = {}
    for name in cell_names():
        cell = make_cell(name)
        seen.setdefault(cell.name, kernel_of(cell) is not None)
    return ([name for name, ok in seen.items() if ok],
            [name for name, ok in seen.items() if not ok])


def supports(cell: Cell, *tensors: Tensor | None) -> bool:
    """Whether the compiled loop can run ``cell`` on these tensors (CPU, float32/64)."""
    return kernel_of(cell) is not None and all(
        t is None or (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64))
        for t in tensors)


# -- the loop over time: forward, then the hand backward ---------------------------------------

def unroll_forward(cell: Cell, xw: Tensor, batch_sizes: list[int], state0: State,
                   weight_hh: Tensor | None, bias_hh: Tensor | None, extra: tuple = (),
                   reverse: bool = False, keep: bool = True,
                   module=None) -> tuple[Tensor, State, tuple]:
    """:func:`rnnkit.bptt.unroll_forward` for a supported cell, in one C++ call (same
    arguments): out (N, H), the final states (B, H) each, and the caches (a tuple of packed
    tensors) that :func:`unroll_backward` reads — none with ``keep=False`` (inference: no
    backward to come, so no caches are written). For minGRU and minLSTM the caches hold
    ``xw`` itself (the backward recomputes the gates from it, nothing is copied): change it
    in place before :func:`unroll_backward` and the gradients are wrong."""
    return kernel_of(cell).forward(module or load(), cell, xw.contiguous(), batch_sizes,
                                   state0, weight_hh, None if cell.fold_bias_hh else bias_hh,
                                   tuple(extra), reverse, keep)


def unroll_backward(cell: Cell, dout: Tensor, dfinal: State, caches: tuple,
                    batch_sizes: list[int], weight_hh: Tensor | None, extra: tuple = (),
                    reverse: bool = False, x: Tensor | None = None, module=None) -> Grads:
    """:func:`rnnkit.bptt.unroll_backward` for a supported cell, in one C++ call:
    :class:`~rnnkit.compiled.kernel.Grads` — ``dweight_ih`` (G*H, I) too when the layer
    input ``x`` (N, I) is given (its product shares dxw's transposed copy with
    dweight_hh's)."""
    return kernel_of(cell).backward(module or load(), cell, dout.contiguous(), dfinal, caches,
                                    batch_sizes, weight_hh, tuple(extra), reverse, x)


def _projection(cell: Cell, x: Tensor, weight_ih: Tensor, bias_ih: Tensor | None,
                bias_hh: Tensor | None) -> Tensor:
    """:func:`rnnkit.bptt.input_projection` through the loops' products: (N, G*H)."""
    return load().linear(x, weight_ih, projection_bias(cell, bias_ih, bias_hh))


class CompiledRecurrentFunction(torch.autograd.Function):
    """One layer, one direction: :class:`rnnkit.autograd.RecurrentFunction` with the
    compiled loops (same arguments, same gradients)."""

    @staticmethod
    def forward(ctx, cell: Cell, batch_sizes: list[int], reverse: bool, x: Tensor,
                weight_ih: Tensor, weight_hh: Tensor | None, bias_ih: Tensor | None,
                bias_hh: Tensor | None, *state0_and_extra: Tensor):
        k = cell.num_states
        state0, extra = state0_and_extra[:k], state0_and_extra[k:]
        xw = _projection(cell, x, weight_ih, bias_ih, bias_hh)          # (N, G*H)
        out, final, caches = unroll_forward(cell, xw, batch_sizes, state0, weight_hh, bias_hh,
                                            extra, reverse)
        ctx.cell, ctx.batch_sizes, ctx.reverse = cell, batch_sizes, reverse
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        # The caches through save_for_backward where they are tensors (rnnkit's kernels): freed
        # as soon as the backward is done, and seen by saved-tensor hooks (checkpointing,
        # offloading); a user kernel's own objects on ctx.
        tensors = all(isinstance(c, Tensor) for c in caches)
        ctx.caches = None if tensors else caches
        ctx.counts = len(extra)
        ctx.save_for_backward(x, weight_ih, weight_hh, *extra, *(caches if tensors else ()))
        return (out, *final)            # fresh tensors: no cache holds the final states

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor, *dfinal: Tensor):
        x, weight_ih, weight_hh, *rest = ctx.saved_tensors
        extra = tuple(rest[:ctx.counts])
        caches = tuple(rest[ctx.counts:]) if ctx.caches is None else ctx.caches
        g = unroll_backward(ctx.cell, dout, dfinal, caches, ctx.batch_sizes, weight_hh, extra,
                            ctx.reverse, x)
        linear = load().linear                                          # y = x @ w.T
        dx = linear(g.dxw, weight_ih.t()) if ctx.needs_input_grad[3] else None  # dxw W_ih (N, I)
        dbias_ih = g.dxw.sum(0) if ctx.has_bias[0] else None
        dbias_hh = None
        if ctx.has_bias[1]:           # a copy, not the same tensor: the two .grad must not alias
            same = g.dhw is g.dxw and dbias_ih is not None
            dbias_hh = dbias_ih.clone() if same else g.dhw.sum(0)
        return (None, None, None, dx, g.dweight_ih, g.dweight_hh, dbias_ih, dbias_hh,
                *g.dstate0, *g.dextra)


def applies(cell: Cell, x: Tensor, state0: State, weight_ih: Tensor,
            weight_hh: Tensor | None, bias_ih: Tensor | None, bias_hh: Tensor | None,
            extra: tuple[Tensor, ...] = ()) -> bool:
    """Whether :func:`run` computes this layer call: a supported cell, CPU float32/64
    tensors of one dtype, no autocast, no engine observer (the diagnostics watch the Python
    engine's steps), and the extension built."""
    tensors = [t for t in (x, weight_ih, weight_hh, bias_ih, bias_hh, *state0, *extra)
               if t is not None]
    return (OBSERVERS.get() is None and not torch.is_autocast_enabled(x.device.type)
            and supports(cell, *tensors) and len({t.dtype for t in tensors}) == 1
            and load() is not None)


def prefers(cell: Cell) -> bool:
    """Whether the compiled loop beats PyTorch's own kernel for ``cell`` on the CPU, so
    that backend "auto" should take it (the kernel's ``prefers_over_native``): the GRU and
    the Elman RNN (about 2x: ``benchmarks/bench_compiled.py``; PyTorch runs them as ATen
    loops over MKL), not the LSTM (oneDNN's fused LSTM is as fast or faster)."""
    kernel = kernel_of(cell)
    return kernel is not None and kernel.prefers_over_native and load() is not None


def run(cell: Cell, x: Tensor, batch_sizes: list[int], state0: State, weight_ih: Tensor,
        weight_hh: Tensor | None, bias_ih: Tensor | None, bias_hh: Tensor | None,
        extra: tuple[Tensor, ...] = (), reverse: bool = False) -> tuple[Tensor, State]:
    """One layer, one direction through the compiled loops, where :func:`applies` says so:
    the arguments and results of :func:`rnnkit.autograd.recurrent_bptt`."""
    tensors = (x, weight_ih, weight_hh, bias_ih, bias_hh, *state0, *extra)
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad
                                              for t in tensors):
        # inference: the compiled forward writing no caches
        xw = _projection(cell, x, weight_ih, bias_ih, bias_hh)          # (N, G*H)
        out, final, _ = unroll_forward(cell, xw, batch_sizes, state0, weight_hh, bias_hh,
                                       extra, reverse, keep=False)
        return out, final
    out, *final = CompiledRecurrentFunction.apply(cell, batch_sizes, reverse, x, weight_ih,
                                                  weight_hh, bias_ih, bias_hh, *state0, *extra)
    return out, tuple(final)


def recurrent_compiled(cell: Cell, x: Tensor, batch_sizes: list[int], state0: State,
                       weight_ih: Tensor, weight_hh: Tensor | None, bias_ih: Tensor | None,
                       bias_hh: Tensor | None, extra: tuple[Tensor, ...] = (),
                       reverse: bool = False) -> tuple[Tensor, State]:
    """:func:`rnnkit.autograd.recurrent_bptt`'s call through the compiled loops where they
    apply (see :func:`applies`), through the Python engine everywhere else."""
    from rnnkit.autograd import recurrent_python

    if applies(cell, x, state0, weight_ih, weight_hh, bias_ih, bias_hh, extra):
        return run(cell, x, batch_sizes, state0, weight_ih, weight_hh, bias_ih, bias_hh,
                   extra, reverse)
    return recurrent_python(cell, x, batch_sizes, state0, weight_ih, weight_hh, bias_ih,
                            bias_hh, extra, reverse)

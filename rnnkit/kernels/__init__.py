"""Fused GPU kernels for the built-in cells' time step (Triton), an optional extra.

- :mod:`rnnkit.kernels.triton_steps` — Triton kernels fusing the *pointwise* part of one
  step of ``torch.nn``'s LSTM, GRU (reset after) and tanh RNN, forward and backward, and a
  layer driver over time (one matrix product and one kernel per step) as an autograd
  Function. Dense batches only in this first version (no packed lengths).

Triton is optional: importing this package never imports it, and :func:`available` says
whether the kernels can run. On a CUDA device they compile; on the CPU they run only
through Triton's interpreter, which must be switched on (``TRITON_INTERPRET=1``) *before*
:mod:`rnnkit.kernels.triton_steps` is imported — Triton reads it when a kernel is defined.
That is how the tests check them on a machine without a GPU.

``from rnnkit.kernels import recurrent_triton`` (and the other names of ``triton_steps``)
imports Triton on first use.
"""

from __future__ import annotations

import importlib
import os
import sys

_LAZY = ("recurrent_triton", "triton_layer", "supports", "STEPS", "TritonRecurrentFunction")


def available(device: str = "cuda") -> tuple[bool, str]:
    """Whether the Triton kernels can run on ``device`` ("cuda" or "cpu"), and why (not).

    Returns ``(True, "triton X.Y.Z")`` or ``(False, reason)``; never raises.
    """
    try:
        import triton
    except Exception as error:                          # ImportError, or a broken install
        return False, f"triton cannot be imported ({type(error).__name__}: {error})"
    kind = str(device).split(":")[0]
    if kind == "cpu":
        module = sys.modules.get("rnnkit.kernels.triton_steps")
        interpreted = (module.INTERPRETED if module is not None
                       else os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on"))
        if not interpreted:
            return False, ("on the CPU the Triton kernels run only through Triton's interpreter: "
                           "set TRITON_INTERPRET=1 before rnnkit.kernels.triton_steps is imported")
    elif kind == "cuda":
        import torch
        if not torch.cuda.is_available():
            return False, "no CUDA device (torch.cuda.is_available() is False)"
    else:
        return False, (f"device: the Triton kernels run on 'cuda' (or 'cpu' interpreted), "
                       f"not {kind!r}")
    return True, f"triton {triton.__version__}"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module("rnnkit.kernels.triton_steps"), name)
    raise AttributeError(f"module 'rnnkit.kernels' has no attribute {name!r}")


__all__ = ["available", *_LAZY]

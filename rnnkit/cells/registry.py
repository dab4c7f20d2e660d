"""The cell registry: the only list of the cells rnnkit has.

Each entry names a cell variant, the constructor options it takes (with their defaults),
and a one-line summary. Everything else a caller needs is declared by the cell itself:
its state arity (``num_states``), its initial state (``initial_state``), its preferred
initialisation (``default_init``), and its ``torch.nn`` twin (through ``native_mode``;
see :func:`torch_twin`). Layers, models, tasks, the CLI, ``rnnkit check``, diagnostics,
tests and benchmarks all read this table; no code outside ``rnnkit/cells/`` asks "is this
an LSTM?".

A user's own cell is named ``"package.module:Class"`` (a subclass of
:class:`rnnkit.cells.Cell`); its options are its constructor's keyword arguments.

Adding a cell: write ``rnnkit/cells/<name>.py`` and add one :func:`register` line below.
"""

from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from rnnkit.cells.base import Cell
from rnnkit.cells.dropout import with_noise
from rnnkit.cells.elman import NONLINEARITIES, ElmanCell
from rnnkit.cells.gru import GRUCell, GRUResetBeforeCell
from rnnkit.cells.indrnn import IndRNNCell
from rnnkit.cells.layernorm_gru import LayerNormGRUCell
from rnnkit.cells.layernorm_lstm import LayerNormLSTMCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.min_gru import MinGRUCell
from rnnkit.cells.min_lstm import MinLSTMCell

# Every option a registered cell takes: its help text, and its choices where it has any.
# One declaration per option; the CLI makes a flag of each (``--peephole``, …).
OPTION_HELP: dict[str, str] = {
    "nonlinearity": "rnn: the nonlinearity f of h = f(U x + W h + b)",
    "peephole": "lstm: diagonal peephole connections from the cell to its gates",
    "reset_before": "gru: reset gate before the recurrent product (Cho et al. 2014)",
    "zoneout": "any cell: each state unit keeps its previous value with this probability "
               "in training (Krueger et al. 2016)",
    "recurrent_dropout": "one dropout mask per sequence on h_{t-1} inside the recurrence (Gal "
                         "& Ghahramani 2016); cells whose h_{t-1} enters only their "
                         "recurrent product: rnn*, irnn, lstm*, layernorm_lstm, indrnn",
}
# Options every cell takes: training-time noise added by a wrapper (rnnkit.cells.dropout).
NOISE_OPTIONS: dict[str, float] = {"zoneout": 0.0, "recurrent_dropout": 0.0}
OPTION_CHOICES: dict[str, tuple[str, ...]] = {"nonlinearity": tuple(NONLINEARITIES)}


@dataclass(frozen=True)
class CellEntry:
    """One registered cell variant.

    Attributes:
        name: what ``--cell`` and the model configs call it.
        build: ``build(**options) -> Cell``.
        options: the options it takes, with their defaults (keys of :data:`OPTION_HELP`).
        summary: one line for ``--help`` and the docs.
    """

    name: str
    build: Callable[..., Cell]
    options: Mapping[str, Any]
    summary: str


REGISTRY: dict[str, CellEntry] = {}


def register(name: str, build: Callable[..., Cell], summary: str,
             **options: Any) -> CellEntry:
    """Add a cell variant under ``name``; ``options`` are those it takes, with defaults."""
    if name in REGISTRY:
        raise ValueError(f"cell {name!r} is registered already")
    unknown = sorted(set(options) - set(OPTION_HELP))
    if unknown:
        raise ValueError(f"cell {name!r}: options {unknown} need a line in OPTION_HELP")
    REGISTRY[name] = entry = CellEntry(name, build, dict(options), summary)
    return entry


# -- the cells ------------------------------------------------------------------------------

register("lstm", LSTMCell, "LSTM, torch.nn.LSTM's cell (i, f, g, o)", peephole=False)
register("lstm_peephole", lambda: LSTMCell(peephole=True),
         "LSTM with peephole connections (Gers & Schmidhuber 2000)")
register("gru", lambda reset_before=False: GRUResetBeforeCell() if reset_before else GRUCell(),
         "GRU, torch.nn.GRU's cell: reset gate after the recurrent product", reset_before=False)
register("gru_reset_before", GRUResetBeforeCell,
         "GRU with the reset gate before the recurrent product (Cho et al. 2014)")
register("rnn", ElmanCell, "Elman RNN, torch.nn.RNN's cell", nonlinearity="tanh")
register("rnn_tanh", lambda: ElmanCell("tanh"), "Elman RNN, h = tanh(U x + W h + b)")
register("rnn_relu", lambda: ElmanCell("relu"), "Elman RNN, h = relu(U x + W h + b)")
register("rnn_sigmoid", lambda: ElmanCell("sigmoid"),
         "Elman RNN with a sigmoid (Mikolov's RNNLM hidden layer)")
register("irnn", lambda: ElmanCell("relu", default_init="identity"),
         "ReLU Elman RNN with identity recurrent weights (Le, Jaitly & Hinton 2015)")
register("indrnn", IndRNNCell, "IndRNN, h = relu(W x + u ⊙ h + b), u a vector (Li et al. 2018)")
register("min_gru", MinGRUCell, "minGRU, gates from x alone (Feng et al. 2024)")
register("min_lstm", MinLSTMCell, "minLSTM, normalised gates from x alone (Feng et al. 2024)")
register("layernorm_lstm", LayerNormLSTMCell,
         "LSTM with layer normalisation of each gate block and of c (Ba et al. 2016)")
register("layernorm_gru", LayerNormGRUCell,
         "GRU (reset after) with layer normalisation of each gate block (Ba et al. 2016)")


# -- lookup ---------------------------------------------------------------------------------

def cell_names() -> list[str]:
    """The registered names, in registration order."""
    return list(REGISTRY)


def all_options() -> dict[str, Any]:
    """Every option any registered cell takes -> its default (for the CLI and configs)."""
    defaults: dict[str, Any] = dict(NOISE_OPTIONS)
    for entry in REGISTRY.values():
        for key, value in entry.options.items():
            defaults.setdefault(key, value)
    return defaults


# Loading a model never runs code a file names: while a model's config.json or a run.json
# is read (inside named_by_file()), a user cell's module must be imported already — by the
# program that loads the model — unless the user says otherwise in this variable.
TRUST_ENV = "RNNKIT_TRUST_CELLS"
_NAMED_BY_FILE: ContextVar[str] = ContextVar("rnnkit_cells_named_by_file", default="")


@contextmanager
def named_by_file(path):
    """Cells built inside are named by the file ``path`` (see :data:`TRUST_ENV`)."""
    token = _NAMED_BY_FILE.set(str(path))
    try:
        yield
    finally:
        _NAMED_BY_FILE.reset(token)


def _user_cell_class(spec: str) -> type[Cell]:
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"cell: expected 'package.module:Class' for a cell of your own, "
                         f"got {spec!r}")
    trusted = not _NAMED_BY_FILE.get() or os.environ.get(TRUST_ENV) == "1"
    if not trusted and module_name not in sys.modules:
        raise ValueError(f"cell {spec!r}: rnnkit never imports a module that a model file "
                         f"names; import {module_name} in your program first, or set "
                         f"{TRUST_ENV}=1 to let rnnkit import it")
    if trusted and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())     # as `python -m` and uvicorn: the working folder
    try:
        module = importlib.import_module(module_name)
    except Exception as error:      # any failure of the user's module is their input error
        raise ValueError(f"cell {spec!r}: cannot import {module_name!r} "
                         f"({type(error).__name__}: {error})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"cell {spec!r}: module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Cell)):
        raise ValueError(f"cell {spec!r}: {class_name} is not a subclass of rnnkit.cells.Cell")
    return cls


def is_user_cell(name: str) -> bool:
    """Whether ``name`` is a ``"package.module:Class"`` path rather than a registered name."""
    return ":" in name


def make_cell(name: str, **options: Any) -> Cell:
    """The cell registered as ``name`` (or ``"package.module:Class"``) with ``options``.

    Raises ValueError naming the cell and the option for an unknown name, an option the
    cell does not take, or a bad value.
    """
    if not isinstance(name, str):
        raise ValueError(f"cell: expected a name, got {type(name).__name__}")
    noise = {key: options.pop(key) for key in NOISE_OPTIONS if key in options}
    return with_noise(_plain_cell(name, options), **noise)


def _plain_cell(name: str, options: dict[str, Any]) -> Cell:
    if is_user_cell(name):
        cls = _user_cell_class(name)
        try:
            return cls(**options)
        except Exception as error:  # any failure of the user's constructor is their input
            raise ValueError(f"cell {name!r}: cannot build it with options {options} "
                             f"({type(error).__name__}: {error})") from None
    entry = REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"cell: unknown {name!r}; expected one of {cell_names()} or "
                         f"'package.module:Class' for a cell of your own")
    for key, value in options.items():
        if key not in entry.options:
            takes = sorted(entry.options) or "none"
            raise ValueError(f"cell {name!r} takes no option {key!r} (its options: {takes}; "
                             f"every cell's: {sorted(NOISE_OPTIONS)})")
        default = entry.options[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false for cell {name!r}, got {value!r}")
        if key in OPTION_CHOICES and value not in OPTION_CHOICES[key]:
            raise ValueError(f"{key}: expected one of {list(OPTION_CHOICES[key])} for cell "
                             f"{name!r}, got {value!r}")
    return entry.build(**options)


def cell_options_of(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options in ``options`` that cell ``name`` takes and that differ from its
    defaults (for a user cell: all of them) — what a model config records."""
    noise = {k: v for k, v in options.items() if k in NOISE_OPTIONS and v != NOISE_OPTIONS[k]}
    if is_user_cell(name):
        return {**{k: v for k, v in options.items() if k not in NOISE_OPTIONS}, **noise}
    entry = REGISTRY.get(name)
    if entry is None:
        make_cell(name)             # raises the unknown-name error
    return {**{k: v for k, v in options.items() if k in entry.options and entry.options[k] != v},
            **noise}


def options_from_legacy_fields(name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """rnnkit 0.1 model configs held cell options as fields of their own
    (``nonlinearity``, ``peephole``, ``reset_after``): the options of today's form that
    cell ``name`` takes and that differ from its defaults."""
    if is_user_cell(name):
        return {}                   # 0.1 had no cells of users' own
    given = {"nonlinearity": fields.get("nonlinearity", "tanh"),
             "peephole": fields.get("peephole", False),
             "reset_before": not fields.get("reset_after", True)}
    return cell_options_of(name, given)


_TWINS = {"LSTM": (nn.LSTM, {}), "GRU": (nn.GRU, {}),
          "RNN_TANH": (nn.RNN, {"nonlinearity": "tanh"}),
          "RNN_RELU": (nn.RNN, {"nonlinearity": "relu"})}


def torch_twin(cell: Cell) -> tuple[type[nn.Module], dict] | None:
    """The ``torch.nn`` class (and its keyword arguments) that computes ``cell`` with the
    same parameters, or None when there is none."""
    return _TWINS.get(cell.native_mode) if cell.native_mode else None

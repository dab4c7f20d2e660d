"""How rnnkit's configuration dataclasses declare their fields, and the checks they share.

Every setting is one dataclass field, declared with :func:`option`: its default and help
text (and, where the command line calls it otherwise, its flag) live in the field's
metadata. The command line (``rnnkit.cli``) makes its options of these declarations, and a
TOML ``--config`` file uses the same names, so the Python API and the CLI share every
default::

    @dataclass(frozen=True)
    class ClassifierConfig:
        hidden_size: int = option(150, "hidden units per direction", flag="--hidden")
        bidirectional: bool = option(True, "one direction instead of two",
                                     flag="--unidirectional")

A bool field becomes a flag that sets the opposite of its default (``--unidirectional``
sets ``bidirectional = False``); a help text of a bool says what the flag does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, field


def option(default=MISSING, help: str = "", *, flag: str | None = None,
           factory=MISSING, choices=None, resume: str = "", derived: bool = False):
    """A dataclass field declared as an option (see the module docstring).

    Args:
        default: the default (or ``factory`` for a mutable one).
        help: one line for ``--help`` (the default is appended by the CLI).
        flag: the command-line flag when it is not ``--field-name``.
        choices: the values it takes, shown in ``--help`` (the dataclass checks them).
        resume: may be changed when a run is resumed: "budget" (the run's budget, which
            run.json then keeps for the next resume) or "display" (that resume's only).
        derived: set from the data (a vocabulary size), never given by the user.
    """
    metadata = {"help": help, "flag": flag, "choices": tuple(choices or ()),
                "resume": resume, "derived": derived}
    return field(default=default, default_factory=factory, metadata=metadata)


def derived(default=MISSING):
    """A field that the data sets (a vocabulary size, the number of classes): no option."""
    return option(default, derived=True)


def declared(f: dataclasses.Field, key: str, fallback=None):
    """A field's declared metadata ``key`` (see :func:`option`)."""
    return f.metadata.get(key, fallback)


def field_default(f: dataclasses.Field):
    """A field's default value (a fresh one for a ``factory`` field; MISSING if none)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


# -- the fields every model config declares alike ---------------------------------------------

def cell_field(default: str):
    """``cell``: a registered cell name or ``"package.module:Class"``."""
    return option(default, "the recurrent cell")


def cell_options_field():
    """``cell_options``: the cell's own options, e.g. ``{"peephole": True}``."""
    return option(help="the cell's options (each one a flag of its own)", factory=dict)


def backend_field():
    """``backend``: which engine runs the recurrent layers."""
    from rnnkit.layers import BACKENDS

    return option("auto", "the engine of the recurrent layers", choices=BACKENDS)


# -- checks ---------------------------------------------------------------------------------

#: Bounds of a model config's dimensions, checked by every model config (``__post_init__``)
#: so that a config from the API, the command line or a model directory's config.json is
#: refused before anything is allocated: a size (hidden, embedding, condition units) at most
#: MAX_SIZE, a number of recurrent layers at most MAX_LAYERS, a vocabulary (or number of
#: classes, tags, labels) at most MAX_VOCAB; a loaded model at most MAX_PARAMETERS parameters.
MAX_SIZE = 65_536
MAX_LAYERS = 64
MAX_VOCAB = 10_000_000
MAX_PARAMETERS = 2_000_000_000

#: Bounds of what one input may make a model allocate at inference (rnnkit.tasks.common):
#: a classifier's line, a tagger's sentence and a translator's source are read whole, so one
#: longer than MAX_INPUT_CHARS characters or MAX_INPUT_TOKENS tokens (a tagger word longer
#: than MAX_WORD_CHARS characters) is refused naming its file and line; a language model's
#: ``score`` has no length limit — it reads a long line in windows, carrying the state. One
#: forward pass reads at most BATCH_TOKENS tokens (sequences x the longest of them) and
#: computes at most BATCH_LOGITS output scores (tokens x vocabulary).
MAX_INPUT_CHARS = 200_000
MAX_INPUT_TOKENS = 20_000
MAX_WORD_CHARS = 1_000

#: The decoded inputs of one data file that a task keeps in memory (a captioner's images,
#: a recognizer's filterbank features): at most this many bytes; past it, a clear error.
MAX_DECODED_BYTES = 4 * 2**30
BATCH_TOKENS = 32_768
BATCH_LOGITS = 1 << 25


def bounded(name: str, low: int, high: int):
    """A :func:`check_fields` entry: field ``name`` is an int in ``[low, high]`` (the
    message says "NAME: expected an int >= LOW and at most HIGH, got VALUE")."""
    what = "a positive int" if low == 1 else f"an int >= {low}"
    return (name, lambda c: low <= getattr(c, name) <= high, f"{what} and at most {high}")


def check_types(config) -> None:
    """Raise ``ValueError`` for a dataclass field whose value is not of its declared type
    (bool, int, float, str, tuple) — values may come from TOML or JSON files."""
    kinds = {"bool": bool, "int": int, "float": (int, float), "str": str, "dict": dict}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        declared_type = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        kind = kinds.get(declared_type.split("[")[0])
        if declared_type.startswith("tuple"):
            ok = isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)
        elif kind is None:
            continue
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise ValueError(f"{f.name}: expected {declared_type}, got {value!r}")


def check_cell(config) -> None:
    """Check a model config's ``cell`` and ``cell_options`` against the cell registry (an
    unknown name lists the registered ones; an option the cell does not take names both)."""
    from rnnkit.cells import make_cell

    if not isinstance(config.cell_options, dict):
        raise ValueError(f"cell_options: expected a table of options, got "
                         f"{config.cell_options!r}")
    make_cell(config.cell, **config.cell_options)


def check_fields(config, checks) -> None:
    """Check the declared types (see :func:`check_types`), then each ``(field name, check,
    what was expected)``: raise ``ValueError("NAME: expected WHAT, got VALUE")`` for the
    first check that fails. A check is a callable of the config, so that it runs only once
    the types are known to be right.
    """
    check_types(config)
    for name, ok, expected in checks:
        if not ok(config):
            raise ValueError(f"{name}: expected {expected}, got {getattr(config, name)!r}")

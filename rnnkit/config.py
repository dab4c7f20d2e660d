"""Checks shared by rnnkit's configuration dataclasses."""

from __future__ import annotations


import dataclasses


def check_types(config) -> None:
    """Raise ``ValueError`` for a dataclass field whose value is not of its declared type
    (bool, int, float, str, tuple) — values may come from TOML or JSON files."""
    kinds = {"bool": bool, "int": int, "float": (int, float), "str": str, "dict": dict}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        declared = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        kind = kinds.get(declared.split("[")[0])
        if declared.startswith("tuple"):
            ok = isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)
        elif kind is None:
            continue
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise ValueError(f"{f.name}: expected {declared}, got {value!r}")


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

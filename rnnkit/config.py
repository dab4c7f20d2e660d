"""Checks shared by rnnkit's configuration dataclasses."""

from __future__ import annotations


def check_fields(config, checks: list[tuple[str, bool, str]]) -> None:
    """Raise ``ValueError("NAME: expected WHAT, got VALUE")`` for the first failed check.

    ``checks`` holds ``(field name, passed, what was expected)`` triples.
    """
    for name, ok, expected in checks:
        if not ok:
            raise ValueError(f"{name}: expected {expected}, got {getattr(config, name)!r}")

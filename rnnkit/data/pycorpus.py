"""The default corpus: Python's own standard library source, already on every machine with
Python — the classic "an RNN learns to write code" demo, with no download.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from rnnkit.files import write_text

DEFAULT_CHARS = 2_000_000


def stdlib_source_files() -> list[Path]:
    """The top-level ``*.py`` modules of the running Python's standard library, sorted."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if not files:
        raise ValueError(f"{stdlib}: no Python source files found for the default corpus; "
                         f"pass --data PATH")
    return files


def write_python_corpus(path: str | Path, max_chars: int = DEFAULT_CHARS) -> Path:
    """Write up to ``max_chars`` characters of standard-library source to ``path``.

    Files are taken whole in name order (a file that is not UTF-8 is skipped) until the
    budget is spent; an existing corpus at ``path`` is kept as it is.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size > 0:
        return path
    parts, total = [], 0
    for file in stdlib_source_files():
        try:
            text = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = text.replace("\r\n", "\n")
        parts.append(text if text.endswith("\n") else text + "\n")
        total += len(text)
        if total >= max_chars:
            break
    write_text(path, "".join(parts)[:max_chars])
    return path

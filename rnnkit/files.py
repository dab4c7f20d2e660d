"""Writing files so that a crash never leaves a broken one, and reading JSON with clear errors.

Every file rnnkit writes goes through :func:`atomic_write`: the new content is written to a
temporary file in the target's own directory (so the rename stays on one file system),
flushed to disk, then renamed over the target with ``os.replace``. A crash, an exception or
Ctrl-C at any point leaves either the old file or the new one — never a half-written one —
and the temporary file is removed. A failed write (a full disk, no permission) is a
:class:`WriteError` (an ``OSError``) whose message names the file and, for a full disk, the
bytes being written and the bytes free. The new file gets ordinary permissions
(``0o666 & ~umask``), like any file a program creates, not the 0600 of ``tempfile``.

:func:`read_json` is the one JSON reader: every failure is a ``ValueError`` that names the
file and says what was expected.

This module depends on nothing else in rnnkit, so every layer can use it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path


class WriteError(OSError):
    """A file could not be written: the message names it (and, when the disk is full, the
    space needed and the space free); ``errno`` is the cause's (``errno.ENOSPC``, …)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code

    def __str__(self) -> str:
        return self.args[0]


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object],
                 size: int | None = None) -> None:
    """Call ``write(tmp)`` to produce the file at the path ``tmp``, then rename it to ``path``.

    ``tmp`` is a fresh, empty file next to ``path`` (missing parent folders are created).
    If ``write`` or anything after it fails — including ``KeyboardInterrupt`` — ``tmp`` is
    removed and ``path`` keeps its old content. An ``OSError`` (a full disk, no permission,
    …) becomes a :class:`WriteError` naming ``path``; on a full disk it also says how much
    was being written (``size`` bytes when the caller knows it) and how much is free.
    Other exceptions propagate as they are.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")   # see TEMPORARY
    written = None                            # bytes in tmp when writing failed
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created by us with mode 0o666, so the kernel applies the umask: ordinary
        # permissions, without touching the process-wide umask. O_EXCL: never reuse
        # someone else's file.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            write(str(tmp))
            _fsync(tmp)
            os.replace(tmp, path)
        except BaseException:
            written = _size(tmp)
            tmp.unlink(missing_ok=True)
            raise
    except WriteError:
        raise
    except OSError as error:
        raise _write_error(path, error, size if size is not None else written) from None
    _fsync_directory(path.parent)


# The names of the temporary files a killed write can leave: atomic_write's own
# (".NAME.<16 hex digits>.tmp"), and safetensors' (it writes through one of its own,
# ".tmp" and 6 letters or digits, in the same folder, then renames it to ours).
TEMPORARY = re.compile(r"\..+\.[0-9a-f]{16}\.tmp|\.tmp[A-Za-z0-9]{6}")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_write` left anywhere under
    ``folder`` (only the names it and safetensors make, :data:`TEMPORARY`; call it while no
    write there is in flight, e.g. holding the run directory's lock). Returns the paths
    removed."""
    stale = [Path(root) / name for root, _, names in os.walk(folder) for name in names
             if TEMPORARY.fullmatch(name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _size(file: Path) -> int | None:
    try:
        return file.stat().st_size
    except OSError:
        return None


def _write_error(path: Path, error: OSError, size: int | None) -> WriteError:
    """The clear form of ``error``, raised while writing ``path``."""
    reason = error.strerror or str(error)
    if error.errno in _FULL:
        reason = os.strerror(error.errno)
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        needed = (f"about {format_bytes(size)} to write" if size else "more space")
        have = f", {format_bytes(free)} free" if free is not None else ""
        return WriteError(f"{path}: cannot be written ({reason}: needs {needed}{have}); "
                          f"free some space and run again — the previous {path.name}, if "
                          f"any, is unchanged", error.errno)
    return WriteError(f"{path}: cannot be written ({reason}); the previous {path.name}, "
                      f"if any, is unchanged", error.errno)


def format_bytes(n: int) -> str:
    """``1536`` → "1.5 KB" (powers of 1024)."""
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def _fsync(file: Path) -> None:
    """Flush ``file``'s content to disk (``write`` may have written it by any means)."""
    with open(file, "rb") as f:
        os.fsync(f.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                                  # some file systems refuse fsync on a folder
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` as UTF-8, exactly as given (no newline translation)."""
    data = text.encode("utf-8")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write, size=len(data))


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON ending with a newline."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """Read a file holding one JSON object.

    Raises ``ValueError`` naming the file: ``"{path}: no such file"``,
    ``"{path}: cannot be read (...)"``, ``"{path}: not valid UTF-8 at byte offset {n}"``,
    ``"{path}: not valid JSON (line {l} column {c}: ...)"`` or
    ``"{path}: expected a JSON object, got {type}"``.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 at byte offset {e.start} "
                         f"(byte 0x{data[e.start]:02x})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: "
                         f"{e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {_json_type(obj)}")
    return obj


def _json_type(obj) -> str:
    """The JSON name of a decoded value's type ("array", "string", ...)."""
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
             type(None): "null"}
    return names.get(type(obj), type(obj).__name__)


def finite_json(thing):
    """``thing`` with every float that is not finite (an overflowed perplexity, say) as the
    string "inf", "-inf" or "nan", in dicts, lists and tuples at any depth."""
    if isinstance(thing, float) and not math.isfinite(thing):
        return "nan" if math.isnan(thing) else ("inf" if thing > 0 else "-inf")
    if isinstance(thing, dict):
        return {k: finite_json(v) for k, v in thing.items()}
    if isinstance(thing, (list, tuple)):
        return [finite_json(v) for v in thing]
    return thing


def strict_json(thing, **kwargs) -> str:
    """``json.dumps`` of ``thing`` as strict JSON (:func:`finite_json`): never the
    non-standard ``Infinity``/``NaN`` that ``json.dumps`` writes."""
    return json.dumps(finite_json(thing), allow_nan=False, **kwargs)

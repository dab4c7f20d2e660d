"""One training process per run directory: an OS file lock on ``DIR/.lock``.

:class:`RunLock` takes an exclusive, non-blocking ``fcntl.flock`` on ``DIR/.lock`` and
writes the holder's PID and host into the file, for the message a second process gets.
The operating system drops a flock when its process ends in any way (exit, exception,
``kill -9``), so a lock file left behind by a dead process is never obeyed: the next run
simply takes the lock and writes its own PID. A clean release removes the file.

Readers of a model (``eval``, ``generate``, …) take no lock.

This module depends on nothing else in rnnkit.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:                       # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(directory):`` holds the directory's lock (creating the directory if
    needed) or raises ``ValueError`` naming the directory and the process holding it."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        while True:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise ValueError(f"{self.directory}: cannot be used as a run directory "
                                 f"({error.strerror or error})") from None
            if not _flock_soon(fd):
                os.close(fd)
                raise _in_use(self.path) from None
            # The file may have been removed (a holder's release) between our open and our
            # lock: then our lock is on a file nobody else will open; try again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)     # while still holding it (see acquire)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _flock_soon(fd: int) -> bool:
    """Take the exclusive lock on ``fd``, trying a few times over 0.1 s (another process's
    :func:`refuse_if_held` may hold its brief shared lock); False if it stays held."""
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if attempt + 1 < LOCK_TRIES:
                time.sleep(0.02)
    return False


LOCK_TRIES = 5


def refuse_if_held(directory: str | os.PathLike) -> None:
    """Raise the ``ValueError`` :class:`RunLock` would if a process holds ``directory``'s
    lock now; creates nothing (a check made before starting the processes that will take
    it)."""
    path = Path(directory) / LOCK_FILE
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:                       # no lock file: nobody holds it
        return
    try:                                  # shared: enough to meet a holder's exclusive
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)   # lock (and allowed read-only on NFS)
    except BlockingIOError:
        raise _in_use(path) from None
    except OSError:                       # cannot tell here: RunLock will
        pass
    finally:
        os.close(fd)                      # which drops ours, if we took it


def _in_use(path: Path) -> ValueError:
    return ValueError(f"{path.parent}: a run directory in use — {holder(path)} is training "
                      f"in it; wait for it to end (or stop it), or choose another --out")


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, from what the holder wrote: "process PID 123 on host"."""
    import time

    for _ in range(20):                   # the holder writes just after taking the lock
        try:
            words = path.read_text(encoding="utf-8", errors="replace").split()
        except OSError:
            words = []
        if words:
            pid = words[0]
            return f"process PID {pid}" + (f" on {words[1]}" if len(words) > 1 else "")
        time.sleep(0.01)
    return "another process (PID unknown)"

"""Running the app: a socket bound before anything else (so a port in use is one clear
error), uvicorn serving on it, in the foreground (``rnnkit serve``) or in a thread (tests,
benchmarks)."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: a free port) and listening, for uvicorn.

    Raises ``OSError`` with a one-line message for a port in use, a port out of range, an
    address this machine does not have, or a host name that does not resolve.
    """
    if not 0 <= port <= 65535:
        raise OSError(f"--port: expected 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise OSError(f"--host: cannot resolve {host!r} ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)               # connections queue from now on, until uvicorn runs
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise OSError(f"--port: {host}:{port} is already in use; choose another port "
                          f"(--port 0 picks a free one)") from None
        raise OSError(f"--host: cannot listen on {host}:{port} ({error.strerror})") from None
    sock.set_inheritable(True)
    return sock


def address_of(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app, sock: socket.socket, log_level: str):
    import uvicorn

    limits = getattr(getattr(app, "state", None), "limits", None)
    # connections beyond the requests it may hold are refused by uvicorn before any body
    # is read (with room for /health and /models)
    concurrency = None if limits is None else limits.max_concurrent + limits.max_queue + 16
    config = uvicorn.Config(app, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=5, limit_concurrency=concurrency)
    return uvicorn.Server(config)


def serve(app, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn on a bound socket until Ctrl-C."""
    _server(app, sock, log_level).run(sockets=[sock])


@contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, *,
                   log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` from a thread while the block runs; yields the base URL. The server
    stops (and the thread joins) when the block ends."""
    sock = bind_socket(host, port)
    server = _server(app, sock, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="rnnkit-serve")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the server on {address_of(sock)} did not start")
            time.sleep(0.01)
        yield address_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


__all__ = ["bind_socket", "address_of", "serve", "running_server"]

"""``rnnkit serve``: the HTTP JSON API and the web playground (see :mod:`rnnkit.serve`)."""

from __future__ import annotations

import sys
from dataclasses import fields

from rnnkit.config import declared, field_default


def run_serve(args) -> int:
    """Bind the socket (a port in use is an error before anything loads), load every model
    once, then serve until Ctrl-C."""
    from rnnkit.serve import ServeLimits, bind_socket, create_app, load_models, serve
    from rnnkit.serve.server import address_of

    try:
        limits = ServeLimits(**{f.name: getattr(args, f.name) for f in fields(ServeLimits)})
    except ValueError as error:                    # "max_tokens: …" -> "--max-tokens: …"
        name, _, rest = str(error).partition(":")
        raise ValueError(f"--{name.replace('_', '-')}:{rest}") from None
    sock = bind_socket(args.host, args.port)
    try:
        models = load_models(args.models)
        app = create_app(models, limits)
    except BaseException:
        sock.close()
        raise
    url = address_of(sock)
    names = ", ".join(f"{m.name} ({m.task})" for m in models.values())
    print(f"rnnkit serve: {names}\n  API {url}/models, playground {url}/  (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    try:
        serve(app, sock, log_level=args.log_level)
    except KeyboardInterrupt:       # uvicorn re-raises Ctrl-C once it has shut down cleanly
        pass
    finally:
        sock.close()
    print("rnnkit serve: stopped", file=sys.stderr)
    return 0


def add_commands(commands) -> None:
    """The parser of ``rnnkit serve``; its limits are the fields of
    :class:`rnnkit.serve.ServeLimits`."""
    from rnnkit.serve.app import ServeLimits

    parser = commands.add_parser(
        "serve", help="serve models over HTTP (JSON API and web playground)",
        description="Load trained model directories once and answer HTTP JSON requests: "
        "/score, /generate (streamed), /classify, /tag, /translate, /activations, as each "
        "model's task allows; the playground page is at /. Binds 127.0.0.1 unless --host "
        "says otherwise.")
    parser.add_argument("models", metavar="DIR", nargs="+",
                        help="model directory, or NAME=DIR to choose the name requests use "
                        "(default: the directory's name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a "
                        "free one)")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"),
                        help="server log level (default info)")
    for f in fields(ServeLimits):
        default = field_default(f)
        parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=default,
                            help=f"{declared(f, 'help')} (default {default})")
    parser.set_defaults(run=run_serve)

"""``rnnkit serve``: trained models behind an HTTP JSON API, and a web playground.

    from rnnkit.serve import ServeLimits, create_app, load_models, running_server
    app = create_app(load_models(["runs/lm", "sst2=runs/sst2"]), ServeLimits(max_tokens=500))
    with running_server(app) as url:          # uvicorn in a thread, on a free port
        ...                                   # POST {url}/generate, open {url}/ in a browser

The modules, one job each: :mod:`~rnnkit.serve.models` loads the directories (each by its
task's loader), :mod:`~rnnkit.serve.inference` computes each endpoint's answer with the
library's functions, :mod:`~rnnkit.serve.app` is the FastAPI app (requests, limits,
errors, streaming), :mod:`~rnnkit.serve.server` binds and runs it; ``static/`` holds the
playground (plain HTML, CSS and JavaScript: no CDN, works offline).
"""

from rnnkit.serve.app import ApiError, ServeLimits, create_app
from rnnkit.serve.models import ServedModel, load_models
from rnnkit.serve.server import bind_socket, running_server, serve

__all__ = ["ApiError", "ServeLimits", "create_app", "ServedModel", "load_models",
           "bind_socket", "running_server", "serve"]

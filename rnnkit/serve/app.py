"""The HTTP JSON API and the playground page: a FastAPI app over loaded models.

Endpoints (JSON in, JSON out; see docs/serve.md for examples)::

    GET  /health        {"status": "ok", ...}
    GET  /models        each model: name, task, cell, sizes, endpoints; the limits
    POST /score         lm: log-probability of each line        (rnnkit score)
    POST /generate      lm, conditioned_lm: a stream of NDJSON events, token by token,
                        each with its next-token distribution    (rnnkit generate)
    POST /classify      classifier: label and probabilities     (rnnkit predict)
    POST /tag           tagger: a tag per word                  (rnnkit predict)
    POST /translate     translator                              (rnnkit translate)
    POST /activations   lm (character level): one unit over a text, coloured
                                                                 (rnnkit activations)
    GET  /              the playground (static files of this package, no CDN)

A request names its model (``"model": NAME``); it may leave it out when one loaded model
can answer the endpoint. Every error is ``{"error": "FIELD: what was wrong"}`` with a 4xx
status — 400 bad input, 404 unknown model or path, 405 method, 413 body too large, 503
busy — or 500 with a generic message (the traceback goes to the server's log only).

Inference runs in worker threads (the event loop stays free), at most ``max_concurrent``
requests at once with ``max_queue`` more waiting; beyond that a request is answered 503 at
once. Request bodies are bounded (``max_body_bytes``), texts by rnnkit.config's
MAX_INPUT_CHARS, generation by ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Annotated, Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rnnkit.config import (MAX_INPUT_CHARS, MAX_INPUT_TOKENS, MAX_WORD_CHARS, bounded,
                           check_fields, option)
from rnnkit.files import strict_json
from rnnkit.serve import inference
from rnnkit.serve.models import ENDPOINTS, ServedModel

log = logging.getLogger("rnnkit.serve")

STATIC = resources.files("rnnkit.serve") / "static"


#: Requests computing at once cannot exceed the worker threads of anyio's default pool
#: (``anyio.to_thread``), which runs them.
WORKER_THREADS = 40


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server (each one an option of ``rnnkit serve``)."""

    max_concurrent: int = option(4, "requests computed at once (worker threads)")
    max_queue: int = option(16, "requests waiting for a worker; more are answered 503")
    max_body_bytes: int = option(2 * 1024 * 1024, "largest request body, in bytes")
    max_tokens: int = option(1000, "longest generation, in tokens")
    max_texts: int = option(256, "most lines or sentences in one request")
    max_top: int = option(50, "most entries of a next-token distribution")
    max_beam: int = option(16, "widest beam search")
    max_stops: int = option(16, "most stop strings of a generation")
    max_stop_chars: int = option(256, "longest stop string, in characters")

    def __post_init__(self):
        check_fields(self, [bounded("max_concurrent", 1, WORKER_THREADS),
                            bounded("max_queue", 0, 65536),
                            bounded("max_stops", 0, 1000), bounded("max_stop_chars", 1, 65536),
                            bounded("max_body_bytes", 1024, 1 << 30),
                            bounded("max_tokens", 1, 1_000_000),
                            bounded("max_texts", 1, 1_000_000), bounded("max_top", 0, 1000),
                            bounded("max_beam", 1, 1000)])


class ApiError(Exception):
    """An answer other than 200: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


# -- requests -------------------------------------------------------------------------------

Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", protected_namespaces=())
    model: str | None = None


class ScoreRequest(_Request):
    """``lines``: the sentences to score, each on its own (no line breaks inside)."""
    lines: list[str]


class GenerateRequest(_Request):
    """The options of ``rnnkit generate``: ``prime`` ("" starts a line), ``length`` tokens;
    sampling (temperature, top_k, top_p, seed) or ``greedy`` or ``beam``; ``top`` entries
    of each step's distribution; ``condition`` for a conditioned model; ``stop`` strings."""
    prime: str = ""
    length: int = 200
    temperature: Finite | None = None
    top_k: int | None = None
    top_p: Finite | None = None
    greedy: bool = False
    seed: int | None = None
    beam: int = 0
    top: int = 10
    condition: str | None = None
    stop: list[str] = []


class ClassifyRequest(_Request):
    """``texts``: one example per entry."""
    texts: list[str]


class TagRequest(_Request):
    """``sentences``: each a list of words, or a string split at whitespace."""
    sentences: list[str | list[str]]


class TranslateRequest(_Request):
    """``texts``: one sentence per entry; ``beam`` 1 is greedy."""
    texts: list[str]
    beam: int = 5
    length_penalty: Finite = 1.0


class ActivationsRequest(_Request):
    """``text`` to read; ``unit`` of ``layer`` (-1: the last); ``kind``: hidden, cell or a
    gate (see /models ``activation_kinds``)."""
    text: str
    unit: int = 0
    layer: int = -1
    kind: str = "hidden"


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "function-after", "int", "float"):
            continue                              # a union branch, not a field
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_message(error: ValidationError) -> str:
    """The first problem of a request, as "FIELD: what was expected, got VALUE"."""
    first = error.errors(include_url=False)[0]
    where = _field(first["loc"])
    if first["type"] == "missing":
        return f"{where}: required"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    message = first["msg"][0].lower() + first["msg"][1:]
    return f"{where}: {message}, got {_shown(first.get('input'))}"


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_request(body: bytes, schema: type[BaseModel]) -> BaseModel:
    """A request body as ``schema``, or ``ApiError(400)`` saying what is wrong where."""
    if not body.strip():
        raise ApiError(400, "body: expected a JSON object, got an empty body")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except ValueError as error:                   # JSONDecodeError, UnicodeDecodeError, NaN
        raise ApiError(400, f"body: not valid JSON ({error})") from None
    except RecursionError:
        raise ApiError(400, "body: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"body: expected a JSON object, got {type(data).__name__}")
    try:                                          # "\ud800": escaped, yet not text
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(400, f"body: holds {error.object[error.start:error.end]!r}, a lone "
                       f"surrogate, which is not text") from None
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise ApiError(400, validation_message(error)) from None


def json_bytes(thing) -> bytes:
    """Strict JSON, UTF-8, as ``rnnkit … --json`` writes it (:func:`rnnkit.files.strict_json`:
    a number that is not finite becomes the string "inf", "-inf" or "nan")."""
    return strict_json(thing, ensure_ascii=False).encode("utf-8")


# -- limits ---------------------------------------------------------------------------------

class Slots:
    """At most ``running`` requests computing and ``waiting`` more queued; the next one is
    refused at once with 503 (and ``Retry-After``). Lives on the event loop's thread."""

    def __init__(self, running: int, waiting: int):
        self.running, self.capacity = running, running + waiting
        self.held = 0                       # computing + waiting
        self._semaphore: asyncio.Semaphore | None = None
        self._loop = None

    def _sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:          # a new event loop (tests run several)
            self._loop, self._semaphore = loop, asyncio.Semaphore(self.running)
        return self._semaphore

    async def acquire(self) -> None:
        """Take a slot (waiting for one if need be), or raise ApiError(503)."""
        if self.held >= self.capacity:
            raise ApiError(503, f"busy: {self.running} requests are being computed and "
                           f"{self.capacity - self.running} are waiting; try again shortly",
                           headers={"Retry-After": "1"})
        self.held += 1
        try:
            await self._sem().acquire()
        except BaseException:
            self.held -= 1
            raise

    def release(self) -> None:
        """Give a slot back."""
        self.held -= 1
        self._sem().release()


def _in_worker(function, *args, **kwargs):
    with torch.no_grad():
        return function(*args, **kwargs)


def _failure(error: BaseException, what: str) -> ApiError:
    """An ApiError for an exception of a worker: bad input (ValueError) is 400 with its
    message; anything else is logged with its traceback and answered 500."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ValueError):
        return ApiError(400, str(error))
    log.error("%s failed", what, exc_info=error)
    return ApiError(500, f"internal error while serving {what} (logged on the server)")


class _Body:
    """Pure ASGI middleware: read the whole request body, at most ``limit`` bytes (413
    beyond, from Content-Length when declared), then hand it to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit
        self.state = app.state                # the models and limits, as on the app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = ApiError(413, f"body: larger than the limit of {self.limit:,} bytes")
        if declared is not None:
            if not declared.isdigit():
                return await _send_error(send, ApiError(400, "Content-Length: not a number"))
            if int(declared) > self.limit:
                return await _send_error(send, too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_error(send, too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send, error: ApiError) -> None:
    body = json_bytes({"error": error.message})
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the app --------------------------------------------------------------------------------

def answer(thing, status: int = 200, headers: dict | None = None) -> Response:
    """A JSON response (strict JSON, :func:`json_bytes`)."""
    return Response(json_bytes(thing), status_code=status, headers=headers,
                    media_type="application/json")


class _Service:
    """What every endpoint shares: the models, the limits, the slots, and the steps of a
    request (read the body, pick the model, check the texts, compute in a worker)."""

    def __init__(self, models: dict[str, ServedModel], limits: ServeLimits):
        self.models, self.limits = models, limits
        self.slots = Slots(limits.max_concurrent, limits.max_queue)

    def pick(self, name: str | None, endpoint: str) -> ServedModel:
        """The model a request names, or the one loaded model that answers ``endpoint``."""
        models = self.models
        if name is not None:
            if name not in models:
                raise ApiError(404, f"model: no model named {name!r}; loaded: "
                               f"{sorted(models)}")
            entry = models[name]
            if endpoint not in entry.endpoints:
                able = sorted(t for t, e in ENDPOINTS.items() if endpoint in e)
                raise ApiError(400, f"model: {name!r} is a {entry.task} model; /{endpoint} "
                               f"needs a {' or '.join(able)} model")
            return entry
        able = [m for m in models.values() if endpoint in m.endpoints]
        if len(able) == 1:
            return able[0]
        if not able:
            raise ApiError(400, f"model: no loaded model answers /{endpoint} (loaded: "
                           f"{', '.join(f'{m.name} ({m.task})' for m in models.values())})")
        raise ApiError(400, f"model: required, {len(able)} loaded models answer /{endpoint}: "
                       f"{sorted(m.name for m in able)}")

    def check_texts(self, texts: list, field: str, *, one_line: bool = False) -> None:
        """At least one entry, at most max_texts, each at most MAX_INPUT_CHARS."""
        if not texts:
            raise ApiError(400, f"{field}: expected at least one entry")
        if len(texts) > self.limits.max_texts:
            raise ApiError(400, f"{field}: {len(texts):,} entries; at most "
                           f"{self.limits.max_texts:,} in one request")
        for k, text in enumerate(texts):
            if isinstance(text, str) and len(text) > MAX_INPUT_CHARS:
                raise ApiError(400, f"{field}[{k}]: {len(text):,} characters; at most "
                               f"{MAX_INPUT_CHARS:,}")
            if one_line and ("\n" in text or "\r" in text):
                raise ApiError(400, f"{field}[{k}]: holds a line break; send one line per "
                               f"entry")

    async def compute(self, what: str, function, *args, **kwargs):
        """``function(*args, **kwargs)`` in a worker thread under a slot; errors as ApiError."""
        await self.slots.acquire()
        try:
            return await run_in_threadpool(_in_worker, function, *args, **kwargs)
        except Exception as error:          # noqa: BLE001 (sorted by _failure)
            raise _failure(error, what) from None
        finally:
            self.slots.release()

    async def texts(self, request: Request, schema, endpoint: str, field: str, key: str,
                    function, prepare=lambda texts: texts, one_line: bool = False,
                    check=None, **options) -> Response:
        """An endpoint over a list of texts: read ``schema``, pick the model, check the
        texts of ``field`` (and the body by ``check``), compute ``function(entry,
        prepare(texts), **options of the body)`` and answer ``{"model", key: result}``."""
        body = parse_request(await request.body(), schema)
        entry = self.pick(body.model, endpoint)
        texts = getattr(body, field)
        self.check_texts(texts, field, one_line=one_line)
        if check is not None:
            check(body)
        result = await self.compute(f"/{endpoint}", function, entry, prepare(texts),
                                    **{name: getattr(body, name) for name in options})
        return answer({"model": entry.name, key: result})

    async def stream(self, entry: ServedModel, options: dict) -> StreamingResponse:
        """A generation streamed as NDJSON events from a worker, stopped when the client
        leaves (see :func:`inference.generate_events`)."""
        slots = self.slots
        await slots.acquire()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        count = [0]

        def emit(event: dict) -> None:
            if cancelled.is_set():
                raise inference.GenerationCancelled()
            count[0] += event["event"] == "token"
            loop.call_soon_threadsafe(events.put_nowait, event)

        def work() -> None:
            text = _in_worker(inference.generate_events, entry, emit, **options)
            emit({"event": "done", "model": entry.name, "text": text, "tokens": count[0]})

        def finished(task: asyncio.Future) -> None:
            slots.release()
            error = None if task.cancelled() else task.exception()
            if isinstance(error, inference.GenerationCancelled):
                error = None
            events.put_nowait(_End(None if error is None else _failure(error, "/generate")))

        worker = asyncio.ensure_future(run_in_threadpool(work))
        worker.add_done_callback(finished)
        try:
            first = await events.get()
        except BaseException:                     # the client left before the first token
            cancelled.set()
            raise
        if isinstance(first, _End):
            raise first.error or ApiError(500, "internal error: generation ended silently")

        async def lines():
            item = first
            try:
                while not isinstance(item, _End):
                    yield json_bytes(item) + b"\n"
                    item = await events.get()
                if item.error is not None:
                    yield json_bytes({"event": "error", "error": item.error.message}) + b"\n"
            finally:
                cancelled.set()

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store"})


def _add_error_handlers(app) -> None:
    """Every error answered as ``{"error": …}`` JSON; an unexpected one logged, 500."""

    @app.exception_handler(ApiError)
    async def _api_error(request, error: ApiError):
        return answer({"error": error.message}, error.status, error.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, error: HTTPException):
        if error.status_code == 404:
            message = f"path: no endpoint {request.url.path}"
        elif error.status_code == 405:
            message = f"method: {request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        return answer({"error": message}, error.status_code, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, error):
        return answer({"error": "request: not understood"}, 400)

    @app.exception_handler(Exception)
    async def _unexpected(request, error):
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return answer({"error": "internal error (logged on the server)"}, 500)


def _check_translation(limits: ServeLimits):
    def check(body) -> None:
        if not 1 <= body.beam <= limits.max_beam:
            raise ApiError(400, f"beam: expected 1..{limits.max_beam} (1: greedy), got "
                           f"{body.beam}")
        if body.length_penalty < 0:
            raise ApiError(400, f"length_penalty: expected a number >= 0, got "
                           f"{body.length_penalty}")
    return check


def create_app(models: dict[str, ServedModel], limits: ServeLimits | None = None):
    """The FastAPI app (wrapped in the body-size limit) serving ``models`` under ``limits``.

    Language models have their activation kinds found here, before any request."""
    limits = limits or ServeLimits()
    for entry in models.values():
        if entry.task == "lm":
            entry.activation_kinds                                  # noqa: B018 (found once)
    service = _Service(models, limits)
    app = FastAPI(title="rnnkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.models, app.state.limits, app.state.slots = models, limits, service.slots
    _add_error_handlers(app)

    @app.get("/health")
    async def health():
        """Liveness, and how busy the server is."""
        return answer({"status": "ok", "models": len(models), "busy": service.slots.held,
                       "max_concurrent": limits.max_concurrent})

    @app.get("/models")
    async def list_models():
        """Every loaded model (name, task, cell, sizes, endpoints) and the limits."""
        return answer({"models": [m.describe() for m in models.values()],
                       "limits": {**asdict(limits), "max_input_chars": MAX_INPUT_CHARS,
                                  "max_input_tokens": MAX_INPUT_TOKENS,
                                  "max_word_chars": MAX_WORD_CHARS}})

    @app.post("/score")
    async def score(request: Request):
        """Log-probability, tokens and perplexity of each line (``rnnkit score``)."""
        return await service.texts(request, ScoreRequest, "score", "lines", "scores",
                                   inference.score_texts, one_line=True)

    @app.post("/classify")
    async def classify(request: Request):
        """Label and class probabilities of each text (``rnnkit predict``)."""
        return await service.texts(request, ClassifyRequest, "classify", "texts",
                                   "predictions", inference.classify_texts)

    @app.post("/tag")
    async def tag(request: Request):
        """A tag per word of each sentence (``rnnkit predict``)."""
        return await service.texts(
            request, TagRequest, "tag", "sentences", "sentences", inference.tag_sentences,
            prepare=lambda texts: [s.split() if isinstance(s, str) else s for s in texts])

    @app.post("/translate")
    async def translate(request: Request):
        """The translation of each sentence (``rnnkit translate``)."""
        return await service.texts(request, TranslateRequest, "translate", "texts",
                                   "translations", inference.translate_texts,
                                   check=_check_translation(limits), beam=None,
                                   length_penalty=None)

    @app.post("/activations")
    async def activations(request: Request):
        """One unit (or gate) over a text, coloured (``rnnkit activations``)."""
        body = parse_request(await request.body(), ActivationsRequest)
        entry = service.pick(body.model, "activations")
        service.check_texts([body.text], "text")
        view = await service.compute("/activations", inference.activation_view, entry,
                                     body.text, unit=body.unit, layer=body.layer,
                                     kind=body.kind)
        return answer({"model": entry.name, **view})

    @app.post("/generate")
    async def generate(request: Request):
        """Stream a continuation as NDJSON events (see :func:`inference.generate_events`),
        ending with ``{"event": "done", "text", "tokens"}`` (or ``{"event": "error"}``)."""
        body = parse_request(await request.body(), GenerateRequest)
        entry = service.pick(body.model, "generate")
        return await service.stream(entry, _generation_options(body, limits))

    @app.get("/")
    async def playground():
        """The playground page."""
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return _Body(app, limits.max_body_bytes)


class _End:
    """The last item of a generation's event queue: the error that ended it, if any."""

    def __init__(self, error: ApiError | None):
        self.error = error


def _generation_options(body: GenerateRequest, limits: ServeLimits) -> dict:
    """The keyword arguments of :func:`inference.generate_events` of a request, its bounds
    checked (the sampling options themselves are checked by the library)."""
    if not 0 <= body.length <= limits.max_tokens:
        raise ApiError(400, f"length: expected 0..{limits.max_tokens} tokens, got {body.length}")
    if len(body.prime) > MAX_INPUT_CHARS:
        raise ApiError(400, f"prime: {len(body.prime):,} characters; at most "
                       f"{MAX_INPUT_CHARS:,}")
    if not 0 <= body.top <= limits.max_top:
        raise ApiError(400, f"top: expected 0..{limits.max_top}, got {body.top}")
    if not 0 <= body.beam <= limits.max_beam:
        raise ApiError(400, f"beam: expected 0..{limits.max_beam} (0: sample), got {body.beam}")
    if len(body.stop) > limits.max_stops or any(not s or len(s) > limits.max_stop_chars
                                                for s in body.stop):
        raise ApiError(400, f"stop: expected at most {limits.max_stops} non-empty strings of "
                       f"at most {limits.max_stop_chars} characters")
    if body.seed is not None and not 0 <= body.seed < 2 ** 63:
        raise ApiError(400, f"seed: expected an int in 0..2**63-1, got {body.seed}")
    sampling = {k: getattr(body, k) for k in ("temperature", "top_k", "top_p", "seed")
                if getattr(body, k) is not None}
    if body.greedy:
        sampling["greedy"] = True
    if body.beam:
        if sampling:
            raise ApiError(400, f"beam: a search, not sampling; drop "
                           f"{', '.join(sorted(sampling))} (or beam)")
        if body.length == 0:
            raise ApiError(400, "length: beam search needs at least 1 token")
    if body.condition is not None and len(body.condition) > MAX_INPUT_CHARS:
        raise ApiError(400, "condition: too long")
    return {"prime": body.prime, "max_tokens": body.length, "top": body.top,
            "condition": body.condition, "beam": body.beam, "stop": tuple(body.stop),
            "sampling": sampling}


__all__ = ["ServeLimits", "ApiError", "create_app", "parse_request", "validation_message",
           "Slots", "json_bytes"]

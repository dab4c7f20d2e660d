"""``rnnkit serve`` as a real uvicorn server on localhost: 200 mixed requests, 8 at a time,
all answered (latency printed, not asserted); a generation streams its tokens as they
come and stops when the client goes away; a request beyond the worker slots and the queue
is answered 503 at once; and the command itself serves until interrupted."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rnnkit.serve import inference, running_server
from serve_helpers import served_app, trained_models

ROOT = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location("serve_load",
                                                  ROOT / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_200_requests_8_at_a_time_all_succeed(tmp_path_factory, capsys):
    bench = _benchmark()
    app = served_app(tmp_path_factory, ["charlm", "wordlm", "classifier", "tagger",
                                        "translator", "clm"])
    with running_server(app) as url:
        start = time.perf_counter()
        results = bench.run_load(url, requests=200, concurrency=8, length=20)
        wall = time.perf_counter() - start
        assert httpx.get(f"{url}/health").json()["busy"] == 0
    table, figures = bench.latency_table(results, wall)
    with capsys.disabled():
        print(f"\nrnnkit serve, 200 requests 8 at a time (tiny models, real uvicorn):\n{table}")
    errors = [(endpoint, error) for endpoint, _, error in results if error]
    assert errors == []
    assert figures["all"]["n"] == 200
    assert {e for e, _, _ in results} >= {"/health", "/score", "/generate", "/classify",
                                          "/tag", "/translate", "/activations"}


@pytest.fixture
def held_generation(monkeypatch):
    """Generation that stops before its 3rd token until ``release`` is set; ``reached`` is
    set once it is there; ``calls`` counts the tokens computed."""
    reached, release = threading.Event(), threading.Event()
    original = inference.distribution

    def distribution(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            reached.set()
            release.wait(30)
        return original(*args, **kwargs)

    calls: list = []
    monkeypatch.setattr(inference, "distribution", distribution)
    yield reached, release, calls
    release.set()


def test_tokens_stream_as_they_come_and_stop_with_the_client(tmp_path_factory,
                                                             held_generation):
    reached, release, calls = held_generation
    app = served_app(tmp_path_factory, ["charlm"], max_concurrent=1, max_queue=0)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/generate", json={"prime": "the", "length": 1000,
                                                      "greedy": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = json.loads(next(lines))
            assert first["event"] == "token" and first["index"] == 1
            assert reached.wait(30)          # token 3 is held: tokens 1-2 came before it
            # the one worker slot is taken and the queue is 0 deep: refused at once
            busy = client.post("/score", json={"lines": ["the cat"]})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"].startswith("busy: 1 requests are being computed")
            assert client.get("/health").json()["busy"] == 1
        release.set()                        # the client has gone: generation must stop
        assert _wait_until(lambda: client.get("/health").json()["busy"] == 0)
        assert len(calls) < 50                # stopped soon after the client left, not at 1000
        after = client.post("/score", json={"lines": ["the cat"]})
        assert after.status_code == 200


def test_the_serve_command_serves_until_interrupted(tmp_path_factory):
    dirs, _ = trained_models(tmp_path_factory)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnkit", "serve", str(dirs["charlm"]),
         f"cls={dirs['classifier']}", "--port", "0", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = ""
        while "API http" not in line:
            line = process.stderr.readline()
            assert line or process.poll() is None, "the server ended before serving"
        url = re.search(r"API (http://[^/\s]+)/models", line).group(1)
        assert url.startswith("http://127.0.0.1:")          # localhost unless told otherwise
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["status"] == "ok" and health["models"] == 2
        names = [m["name"] for m in httpx.get(f"{url}/models").json()["models"]]
        assert names == ["charlm", "cls"]
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and "rnnkit playground" in page.text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        process.stderr.close()
    assert code == 0

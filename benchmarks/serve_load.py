"""Load on ``rnnkit serve``: N requests, C at a time, against a real uvicorn server on
localhost; prints the latency table (p50, p95, max per endpoint) and writes
``benchmarks/results/serve_load.json``.

    python benchmarks/serve_load.py runs/lm                       # a model, served here
    python benchmarks/serve_load.py runs/lm runs/sst2 --requests 500 --concurrency 16
    python benchmarks/serve_load.py --url http://127.0.0.1:8000   # a server already running

The requests cycle through what the loaded models answer: /score (4 lines), /generate (a
streamed continuation of ``--length`` tokens, read to its end), /classify, /tag, /translate,
/activations (character models), /health. A request counts as an error unless it answers
200 (and a stream ends with its "done" event). Latency is wall-clock from sending to the
last byte; it is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def requests_for(models: list[dict], length: int = 20) -> list[tuple[str, dict | None]]:
    """One (endpoint, JSON body) per thing the models of ``/models`` answer; a GET /health."""
    words = "the cat sat on the mat"
    out: list[tuple[str, dict | None]] = [("/health", None)]
    for m in models:
        name = m["name"]
        for endpoint in m["endpoints"]:
            if endpoint == "score":
                out.append(("/score", {"model": name, "lines": [words, "a dog", "the", words]}))
            elif endpoint == "generate":
                body = {"model": name, "prime": "the" if m.get("level") != "word" else "",
                        "length": length, "seed": 1, "top": 10}
                if m["task"] == "conditioned_lm":
                    body["condition"] = str((m.get("labels") or ["0"])[0])
                    body["prime"] = ""
                out.append(("/generate", body))
            elif endpoint == "classify":
                out.append(("/classify", {"model": name, "texts": [words, "a dog ran"]}))
            elif endpoint == "tag":
                out.append(("/tag", {"model": name, "sentences": [words]}))
            elif endpoint == "translate":
                out.append(("/translate", {"model": name, "texts": [words], "beam": 1}))
            elif endpoint == "activations" and m.get("level") == "char":
                out.append(("/activations", {"model": name, "text": words, "unit": 0}))
    return out


def one_request(client, endpoint: str, body: dict | None) -> tuple[str, float, str | None]:
    """(endpoint, seconds, error or None) of one request, its body read to the end."""
    start = time.perf_counter()
    try:
        if body is None:
            r = client.get(endpoint)
            error = None if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"
        elif endpoint == "/generate":
            with client.stream("POST", endpoint, json=body) as r:
                lines = [line for line in r.iter_lines() if line.strip()]
            last = json.loads(lines[-1]) if lines else {}
            error = (None if r.status_code == 200 and last.get("event") == "done"
                     else f"{r.status_code} {lines[-1][:200] if lines else ''}")
        else:
            r = client.post(endpoint, json=body)
            error = None if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"
    except Exception as exc:                      # noqa: BLE001 (a failed request is data)
        error = f"{type(exc).__name__}: {exc}"
    return endpoint, time.perf_counter() - start, error


def run_load(url: str, requests: int = 200, concurrency: int = 8, length: int = 20,
             timeout: float = 120.0) -> list[tuple[str, float, str | None]]:
    """Send ``requests`` requests to the server at ``url``, ``concurrency`` at a time (one
    HTTP connection per worker thread); (endpoint, seconds, error) per request."""
    import httpx

    with httpx.Client(base_url=url, timeout=timeout) as probe:
        models = probe.get("/models").json()["models"]
    plan = requests_for(models, length)
    local = threading.local()

    def send(k: int):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=timeout)
        return one_request(local.client, *plan[k % len(plan)])

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(send, range(requests)))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the nearest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_table(results, wall: float) -> tuple[str, dict]:
    """The printed table and its figures: per endpoint and overall, count, errors, p50, p95
    and max in milliseconds; requests per second over ``wall`` seconds."""
    groups: dict[str, list] = {}
    for endpoint, seconds, error in results:
        groups.setdefault(endpoint, []).append((seconds, error))
    groups["all"] = [(s, e) for _, s, e in results]
    rows, figures = [f"{'endpoint':14s} {'n':>5s} {'errors':>6s} {'p50 ms':>8s} "
                     f"{'p95 ms':>8s} {'max ms':>8s}"], {}
    for endpoint, items in groups.items():
        times = [1000 * s for s, _ in items]
        f = {"n": len(items), "errors": sum(e is not None for _, e in items),
             "p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95),
             "max_ms": max(times), "mean_ms": statistics.fmean(times)}
        figures[endpoint] = f
        rows.append(f"{endpoint:14s} {f['n']:5d} {f['errors']:6d} {f['p50_ms']:8.1f} "
                    f"{f['p95_ms']:8.1f} {f['max_ms']:8.1f}")
    figures["requests_per_second"] = len(results) / wall
    rows.append(f"{len(results)} requests in {wall:.2f} s: {len(results) / wall:.1f} per second")
    return "\n".join(rows), figures


def main(argv=None) -> int:
    """Serve the models (or take ``--url``), load the server, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", metavar="DIR",
                        help="model directories (or NAME=DIR) to serve here")
    parser.add_argument("--url", help="load a server already running instead")
    parser.add_argument("--requests", type=int, default=200, help="requests in all (200)")
    parser.add_argument("--concurrency", type=int, default=8, help="at a time (8)")
    parser.add_argument("--length", type=int, default=20, help="tokens per /generate (20)")
    parser.add_argument("--max-concurrent", type=int, default=4,
                        help="the server's worker slots (4)")
    args = parser.parse_args(argv)
    if bool(args.url) == bool(args.models):
        parser.error("give model directories or --url")
    import platform

    import torch

    def load(url: str):
        start = time.perf_counter()
        results = run_load(url, args.requests, args.concurrency, args.length)
        return results, time.perf_counter() - start

    if args.url:
        results, wall = load(args.url)
    else:
        from rnnkit.serve import ServeLimits, create_app, load_models, running_server

        app = create_app(load_models(args.models),
                         ServeLimits(max_concurrent=args.max_concurrent))
        with running_server(app) as url:
            results, wall = load(url)
    table, figures = latency_table(results, wall)
    print(f"rnnkit serve under load: {args.requests} requests, {args.concurrency} at a time; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    print(table)
    for endpoint, _, error in results:
        if error:
            print(f"error {endpoint}: {error}")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import write_results

    write_results("serve_load", {"requests": args.requests, "concurrency": args.concurrency,
                                 "length": args.length, "models": args.models or args.url,
                                 "figures": figures})
    return 1 if any(e for _, _, e in results) else 0


if __name__ == "__main__":
    sys.exit(main())

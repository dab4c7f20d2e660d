"""What the benchmark scripts share: where the shared data lives, and writing results."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"           # ../shared/data beside the repository
RESULTS = ROOT / "benchmarks" / "results"


def write_results(name: str, results: dict) -> Path:
    """Write ``benchmarks/results/{name}.json`` and say so."""
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    return path


def train_with_cli(args: list, out: Path, threads: int | None = None) -> dict:
    """Run ``rnnkit train ARGS --out OUT`` in a fresh process (``threads``: its
    OMP_NUM_THREADS; none: the launcher's share per process) and return its figures: wall
    seconds, the last training line (loss, tokens/s and, for several processes, per
    process) and the last validation line of ``metrics.jsonl``."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rnnkit", "train", *map(str, args), "--out", str(out),
                    "--no-progress"], env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in lines if e["split"] == "train"][-1]
    valid = [e for e in lines if e["split"] == "valid"][-1]
    return {"wall_s": seconds, "train": train, "valid": valid}

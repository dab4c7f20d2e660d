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


# The PTB recipe of benchmarks/lm_quality.py as ``rnnkit train`` arguments (2×200 LSTM, tied
# embeddings, SGD lr 20, clip 0.25, bptt 35), less dropout and batch size.
PTB_RECIPE = ["lm", "--level", "word", "--hidden", 200, "--layers", 2, "--tie-weights",
              "--bptt", 35, "--optimizer", "sgd", "--lr", 20, "--clip", 0.25]


def ptb_steps(argv, doc: str) -> tuple[int, list] | None:
    """The ``--steps`` of a fixed-step PTB benchmark and the ``rnnkit train`` arguments its
    runs share (the recipe, the data, validation and a training line at the last step);
    None (said) when ``../shared/data/ptb`` is absent."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    steps = parser.parse_args(argv).steps
    if not (DATA / "ptb").is_dir():
        print(f"skipped: {DATA / 'ptb'} is absent")
        return None
    return steps, [*PTB_RECIPE, "--data", DATA / "ptb", "--max-steps", steps,
                   "--eval-every", steps, "--log-every", steps]


def replace_folder(path: Path, mark: str) -> None:
    """Empty ``path`` for a new run of a benchmark: only a folder that is empty or holds
    ``mark`` (what the benchmark itself writes there) is removed; any other is refused."""
    import shutil

    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not (path / mark).exists():
        raise SystemExit(f"{path}: not empty, and not a folder this benchmark wrote (no "
                         f"{mark}); choose another --out, or empty it yourself")
    shutil.rmtree(path, ignore_errors=True)

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

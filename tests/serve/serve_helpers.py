"""What the serve tests share: tiny models of every served task, trained once per session
in seconds (one optimiser step each), and reading an NDJSON stream.

Test modules import these plain helpers (``from serve_helpers import …``); the models are
cached at module level, so every test file of the folder reuses the same directories.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))     # tests/: tiny_data

from tiny_data import tiny_files, tiny_models  # noqa: E402

_CACHE: dict = {}


def trained_models(tmp_path_factory) -> tuple[dict[str, Path], dict[str, str]]:
    """({name: model directory}, the tiny data files): a character LSTM language model
    ("charlm", 2 layers), a word GRU language model ("wordlm"), a classifier, a tagger, a
    translator and a conditioned language model ("clm"), trained once per session."""
    if "models" in _CACHE:
        return _CACHE["models"]
    root = tmp_path_factory.mktemp("serve-models")
    f = tiny_files(root, n=24, seed=5)
    out = tiny_models(root, f)
    _CACHE["models"] = out, f
    return out, f


def served_app(tmp_path_factory, names=None, **limits):
    """The app serving the tiny models ``names`` (default: all), under ``limits``."""
    from rnnkit.serve import ServeLimits, create_app, load_models

    dirs, _ = trained_models(tmp_path_factory)
    chosen = names or list(dirs)
    return create_app(load_models([f"{n}={dirs[n]}" for n in chosen]), ServeLimits(**limits))


def events_of(text: str) -> list[dict]:
    """The events of an NDJSON body, one JSON object per line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def streamed_text(events: list[dict]) -> str:
    """The text of a generation stream: its text events joined."""
    return "".join(e["text"] for e in events if e["event"] == "text")

"""Tiny data sets of every task, written by the tests that train through the recipe."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = "the cat dog sat ran on a mat".split()


def write_lines(path: Path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def tiny_files(root: Path, n: int = 12, seed: int = 0) -> dict[str, str]:
    """``n`` short random sentences as every task's files: "text" (plain lines),
    "labelled" (``label<TAB>text``, labels 0/1), "tagged" (``word<TAB>tag`` sentences),
    "source" and "target" (aligned lines)."""
    rng = random.Random(seed)
    sentences = [[rng.choice(WORDS) for _ in range(rng.randint(2, 4))] for _ in range(n)]
    lines = [" ".join(s) for s in sentences]
    return {
        "text": write_lines(root / "text.txt", lines),
        "labelled": write_lines(root / "labelled.tsv", [f"{k % 2}\t{line}"
                                                        for k, line in enumerate(lines)]),
        "tagged": write_lines(root / "tagged.tsv", [row for s in sentences for row in
                                                    [f"{w}\tX{len(w)}" for w in s] + [""]]),
        "source": write_lines(root / "pairs.de", lines),
        "target": write_lines(root / "pairs.en", [line.upper() for line in lines]),
    }

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


def _quiet(*_):
    pass


def tiny_models(root: Path, files: dict[str, str]) -> dict[str, Path]:
    """Tiny models of every task trained on ``files`` (one optimiser step each, seconds):
    {"charlm" (char LSTM, 2 layers), "wordlm" (word GRU), "classifier", "tagger",
    "translator", "clm" (conditioned): model directory under ``root``}."""
    from rnnkit.tasks import classifier, conditioned_lm, lm, tagger, translator

    out = {k: root / k for k in ("charlm", "wordlm", "classifier", "tagger", "translator",
                                 "clm")}
    steps = {"max_steps": 1}
    lm.train_lm(lm.LMDataConfig(data=files["text"], level="char"),
                {"hidden_size": 16, "num_layers": 2}, steps, out["charlm"], log=_quiet)
    lm.train_lm(lm.LMDataConfig(data=files["text"], level="word"),
                {"hidden_size": 16, "num_layers": 1, "cell": "gru"}, steps, out["wordlm"],
                log=_quiet)
    classifier.train_classifier(
        classifier.ClassifierDataConfig(train=files["labelled"], valid=files["labelled"]),
        {"hidden_size": 8}, steps, out["classifier"], log=_quiet)
    tagger.train_tagger(tagger.TaggerDataConfig(train=files["tagged"], valid=files["tagged"]),
                        {"hidden_size": 8}, steps, out["tagger"], log=_quiet)
    pairs = f"{files['source']},{files['target']}"
    translator.train_translator(
        translator.TranslationDataConfig(train=pairs, valid=pairs, level="word", min_count=1),
        {"hidden_size": 8}, steps, out["translator"], log=_quiet)
    conditioned_lm.train_conditioned_lm(
        conditioned_lm.ConditionedLMDataConfig(train=files["labelled"],
                                               valid=files["labelled"]),
        {"hidden_size": 8}, steps, out["clm"], log=_quiet)
    return out


def tiny_speech(root: Path, n: int = 10, seed: int = 0, rate: int = 8000) -> str:
    """``speech.tsv``: ``n`` short WAV files ("a" a 300 Hz tone, "b" 900 Hz, a space
    silence) listed with their transcripts, for the recognizer (--sample-rate 8000)."""
    import wave

    import numpy as np

    rng = random.Random(seed)
    rows = []
    for k in range(n):
        text = " ".join(rng.choice(["ab", "ba", "a", "b"]) for _ in range(rng.randint(1, 2)))
        t = np.arange(rate // 10) / rate
        x = np.concatenate([np.zeros(rate // 20) if c == " " else
                            0.5 * np.sin(2 * np.pi * (300 if c == "a" else 900) * t)
                            for c in text])
        with wave.open(str(root / f"speech{k}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((x * 32767).astype("<i2").tobytes())
        rows.append(f"speech{k}.wav\t{text}")
    return write_lines(root / "speech.tsv", rows)


def tiny_scenes(root: Path, n: int = 8, seed: int = 0) -> str:
    """``scenes/``: ``n`` 16×16 images (a red or blue square on the left or right), two
    captions each, listed in ``train.tsv`` and ``valid.tsv`` (the same lines), for the
    captioner (--image-size 16). Returns the folder."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder = root / "scenes"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(n):
        colour, side = rng.choice(["red", "blue"]), rng.choice(["left", "right"])
        image = Image.new("RGB", (16, 16))
        x = 1 if side == "left" else 9
        ImageDraw.Draw(image).rectangle([x, 5, x + 5, 10], fill=colour)
        image.save(folder / f"{k}.png")
        lines += [f"{k}.png\ta {colour} square on the {side}",
                  f"{k}.png\tthe {colour} square is {side}"]
    for split in ("train", "valid"):
        write_lines(folder / f"{split}.tsv", lines)
    return str(folder)

"""A spoken corpus made on this machine, no download: espeak-ng speaks digit strings (or
short PTB sentences) in several voices and speaking rates; sox resamples to 16 kHz and
perturbs the speed; white noise is added at a random SNR. The splits are made so that the
test voices (accents and voice variants) and the test speaking rate are never heard in
training, nor in validation, which has voices and a rate of its own:

    train  accents en-us, en-gb, en-gb-scotland, en-gb-x-rp; variants m1 m2 m3 f1 f2 f3;
           rates 130, 160, 220 wpm; speed x0.9 / 1 / 1.1; SNR 15-40 dB
    dev    accent en-gb-x-gbclan; variants m5, f5; rate 175 wpm; SNR 20-40 dB
    test   accents en-029 (Caribbean), en-gb-x-gbcwmd (West Midlands); variants m4, f4;
           rate 190 wpm; SNR 20-40 dB

    python benchmarks/speech_data.py --out runs/speech-data            # digits, ~2 minutes
    python benchmarks/speech_data.py --text ptb --out runs/speech-ptb  # PTB sentences <= 10 words

Writes OUT/{train,dev,test}.tsv (``wav/NAME.wav<TAB>transcript``), OUT/wav/*.wav (16 kHz,
16-bit mono) and OUT/voices/{split}.tsv (each utterance's voice, rate, speed and SNR);
and OUT/lm.arpa, a word bigram model for beam search (of the training transcripts, or for
PTB of ptb.train.txt's sentences without <unk>); digit strings are 3-7 digits spoken as
words ("four zero two"). PTB sentences come from ../shared/data/ptb (train and dev from
ptb.train.txt, test from ptb.test.txt, so the test sentences are unseen too). Exits 0 with
"skipped: …" where espeak-ng or sox is absent.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import replace_folder  # noqa: E402

DIGITS = "zero one two three four five six seven eight nine".split()
SPLITS = {
    "train": {"accents": ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp"],
              "variants": ["m1", "m2", "m3", "f1", "f2", "f3"], "rates": [130, 160, 220],
              "speeds": [0.9, 1.0, 1.1], "snr": (15, 40)},
    "dev": {"accents": ["en-gb-x-gbclan"], "variants": ["m5", "f5"], "rates": [175],
            "speeds": [1.0], "snr": (20, 40)},
    "test": {"accents": ["en-029", "en-gb-x-gbcwmd"], "variants": ["m4", "f4"],
             "rates": [190], "speeds": [1.0], "snr": (20, 40)},
}
RATE = 16000


def digit_strings(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 7))) for _ in range(n)]


def ptb_sentences(path: Path, n: int, rng: random.Random, max_words: int) -> list[str]:
    """Sentences of at most ``max_words`` words without <unk> or N (espeak would say them
    literally)."""
    lines = [line.split() for line in path.read_text().splitlines()]
    good = [" ".join(w) for w in lines if 3 <= len(w) <= max_words
            and not any(t in ("<unk>", "N") for t in w)]
    rng.shuffle(good)
    return good[:n]


def speak(text: str, voice: str, rate: int, pitch: int, speed: float, snr: float,
          out: Path, tmp: Path, rng: np.random.Generator) -> None:
    """espeak-ng -> sox (16 kHz mono 16-bit, speed) -> white noise at ``snr`` dB."""
    raw, resampled = tmp / "raw.wav", tmp / "16k.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w",
                    str(raw), text], check=True, capture_output=True)
    effects = (["speed", str(speed)] if speed != 1.0 else []) + ["rate", str(RATE)]
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(resampled),
                    *effects], check=True, capture_output=True)
    with wave.open(str(resampled), "rb") as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    power = np.mean(x ** 2) + 1e-9
    x = x + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), len(x))
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes())


def write_bigram_arpa(lines: list[str], path: Path, discount: float = 0.75) -> None:
    """A word bigram model in ARPA format for beam search (pyctcdecode + kenlm): absolute
    discounting interpolated with the unigram distribution, which ARPA's back-off form
    holds exactly — a seen pair gets (c(h, w) - D) / c(h) + bow(h) p(w), an unseen one
    bow(h) p(w), with bow(h) = D x (distinct followers of h) / c(h)."""
    import math
    from collections import Counter

    unigrams, bigrams = Counter(), Counter()
    for line in lines:
        words = ["<s>", *line.split(), "</s>"]
        unigrams.update(words[1:])
        bigrams.update(zip(words, words[1:]))
    total = sum(unigrams.values()) + 1                   # one count for <unk>
    p1 = {w: c / total for w, c in unigrams.items()}
    p1["<unk>"] = 1 / total
    history, followers = Counter(), Counter()
    for (h, _), c in bigrams.items():
        history[h] += c
        followers[h] += 1
    bow = {h: discount * followers[h] / history[h] for h in history}
    rows1 = [f"{math.log10(p1[w]):.6f}\t{w}\t{math.log10(bow[w]) if w in bow else 0:.6f}"
             for w in sorted(p1)]
    rows1.append(f"-99\t<s>\t{math.log10(bow['<s>']):.6f}")
    rows2 = [f"{math.log10((c - discount) / history[h] + bow[h] * p1[w]):.6f}\t{h} {w}"
             for (h, w), c in sorted(bigrams.items())]
    path.write_text(f"\\data\\\nngram 1={len(rows1)}\nngram 2={len(rows2)}\n\n\\1-grams:\n"
                    + "\n".join(rows1) + "\n\n\\2-grams:\n" + "\n".join(rows2)
                    + "\n\n\\end\\\n")


def make_split(name: str, texts: list[str], folder: Path, seed: int) -> int:
    spec = SPLITS[name]
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, text in enumerate(texts):
            voice = f"{rng.choice(spec['accents'])}+{rng.choice(spec['variants'])}"
            rate, speed = rng.choice(spec["rates"]), rng.choice(spec["speeds"])
            pitch, snr = rng.randint(30, 70), rng.uniform(*spec["snr"])
            wav = folder / "wav" / f"{name}-{k:05d}.wav"
            speak(text, voice, rate, pitch, speed, snr, wav, Path(tmp), noise)
            rows.append(f"wav/{wav.name}\t{text}\t{voice}\t{rate}\t{speed}\t{snr:.1f}")
    (folder / f"{name}.tsv").write_text("".join(r.split("\t", 2)[0] + "\t" +
                                                r.split("\t")[1] + "\n" for r in rows))
    (folder / "voices" / f"{name}.tsv").write_text(
        "path\ttext\tvoice\trate\tspeed\tsnr_db\n" + "".join(r + "\n" for r in rows))
    return len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/speech-data", help="folder to write")
    parser.add_argument("--text", choices=("digits", "ptb"), default="digits")
    parser.add_argument("--train", type=int, default=2000, help="training utterances")
    parser.add_argument("--dev", type=int, default=200)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-words", type=int, default=10, help="ptb: longest sentence")
    args = parser.parse_args()
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        print(f"skipped: {' and '.join(missing)} not found (apt-get install espeak-ng sox)")
        return 0
    rng = random.Random(args.seed)
    if args.text == "digits":
        texts = {s: digit_strings(n, rng) for s, n in
                 (("train", args.train), ("dev", args.dev), ("test", args.test))}
        lm_text = texts["train"]
    else:
        ptb = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ptb"
        if not ptb.is_dir():
            print(f"skipped: {ptb} not found")
            return 0
        pool = ptb_sentences(ptb / "ptb.train.txt", args.train + args.dev, rng, args.max_words)
        texts = {"train": pool[args.dev:], "dev": pool[:args.dev],
                 "test": ptb_sentences(ptb / "ptb.test.txt", args.test, rng, args.max_words)}
        lm_text = [line for line in (ptb / "ptb.train.txt").read_text().splitlines()
                   if "<unk>" not in line.split()]
    out = Path(args.out)
    replace_folder(out, "voices")
    (out / "wav").mkdir(parents=True)
    (out / "voices").mkdir()
    for k, (split, lines) in enumerate(texts.items()):
        n = make_split(split, lines, out, args.seed * 100 + k)
        print(f"{split}: {n} utterances, voices {SPLITS[split]['accents']} x "
              f"{SPLITS[split]['variants']}, rates {SPLITS[split]['rates']}")
    write_bigram_arpa([" ".join(line.split()) for line in lm_text], out / "lm.arpa")
    print(f"wrote {out}/{{train,dev,test}}.tsv and {out}/lm.arpa (a word bigram model of "
          f"{'the training transcripts' if args.text == 'digits' else 'ptb.train.txt'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

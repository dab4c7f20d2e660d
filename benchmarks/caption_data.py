"""Captioning data with no download: scenes of shapes rendered with Pillow, each described
by several template sentences.

    python benchmarks/caption_data.py --out runs/scenes          # 4000/300/500 scenes
    python benchmarks/caption_data.py --out runs/scenes --train 800 --valid 100 --test 100

A scene is one of three kinds: one shape (its size, colour and position in a 3×3 grid:
"a large red circle in the top left corner"); a count of one kind of shape ("three green
squares"); two shapes and their relation ("a blue triangle to the left of a yellow
circle", "… above …"). Shapes: circle, square, triangle; colours: red, green, blue,
yellow, purple, orange; sizes: small, large. Each scene is described by ``--captions``
sentences drawn from several templates, so the model must learn that they mean the same.

Unseen scenes: every scene has a canonical description (kind and attributes, positions
jittered); a fixed fifth of all descriptions is kept for the test split alone, so the test
scenes are combinations the model never saw in training (valid and train share the rest).

Writes ``OUT/images/*.png`` (64×64) and ``OUT/train.tsv``, ``OUT/valid.tsv``,
``OUT/test.tsv`` (``images/NAME.png<TAB>caption``, several lines per image).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 80, 215),
           "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (240, 130, 30)}
SIZES = {"small": 0.13, "large": 0.24}          # half the side, as a share of the image
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
COUNTS = {2: "two", 3: "three"}
RENDER = 128                                    # drawn at 128 px, saved at --size


def plural(shape: str) -> str:
    return shape + "s"


def a(words: str) -> str:
    """"a red circle", "an orange circle"."""
    return ("an " if words[0] in "aeiou" else "a ") + words


def position_words(row: str, column: str) -> tuple[str, str]:
    """("in the top left corner", "top left") style phrases of a grid cell."""
    if row == "middle" and column == "center":
        return "in the center", "center"
    if row == "middle":
        return f"on the {column}", column
    if column == "center":
        return f"at the {row}", row
    return f"in the {row} {column} corner", f"{row} {column}"


def describe_one(size: str, colour: str, shape: str, row: str, column: str) -> list[str]:
    where, place = position_words(row, column)
    return [f"{a(size)} {colour} {shape} {where}",
            f"there is {a(size)} {colour} {shape} {where}",
            f"{a(colour)} {shape} {where}",
            f"{a(size)} {colour} {shape}",
            f"{where} there is {a(colour)} {shape}",
            f"the {place} of the picture has {a(size)} {colour} {shape}"]


def describe_count(count: int, colour: str, shape: str) -> list[str]:
    n = COUNTS[count]
    return [f"{n} {colour} {plural(shape)}",
            f"there are {n} {colour} {plural(shape)}",
            f"{n} {plural(shape)} , all of them {colour}",
            f"a picture of {n} {colour} {plural(shape)}",
            f"exactly {n} {colour} {plural(shape)}"]


def describe_pair(first_shape: tuple, relation: str, second_shape: tuple) -> list[str]:
    inverse = {"left of": "right of", "right of": "left of", "above": "below",
               "below": "above"}[relation]

    def rel(r: str) -> str:
        return f"to the {r}" if r in ("left of", "right of") else r

    first, second = " ".join(first_shape), " ".join(second_shape)
    return [f"{a(first)} {rel(relation)} {a(second)}",
            f"{a(second)} {rel(inverse)} {a(first)}",
            f"there is {a(first)} {rel(relation)} {a(second)}",
            f"{a(first)} and {a(second)}",
            f"the {first} is {rel(relation)} the {second}"]


def _cell_centre(rng: random.Random, row: int, column: int) -> tuple[float, float]:
    """A jittered centre of grid cell (row, column), as shares of the image side."""
    return ((column + 0.5) / 3 + rng.uniform(-0.04, 0.04),
            (row + 0.5) / 3 + rng.uniform(-0.04, 0.04))


def draw_shape(draw, shape: str, colour: str, centre, half: float) -> None:
    cx, cy = centre[0] * RENDER, centre[1] * RENDER
    r = half * RENDER
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.85), (cx + r, cy + r * 0.85)],
                     fill=fill)


def random_scene(rng: random.Random):
    """(canonical key, [(shape, colour, centre, half size)], captions)."""
    kind = rng.choices(("one", "count", "pair"), weights=(0.45, 0.2, 0.35))[0]
    if kind == "one":
        size, colour, shape = rng.choice(list(SIZES)), rng.choice(list(COLOURS)), \
            rng.choice(SHAPES)
        row, column = rng.randrange(3), rng.randrange(3)
        shapes = [(shape, colour, _cell_centre(rng, row, column), SIZES[size])]
        captions = describe_one(size, colour, shape, ROWS[row], COLUMNS[column])
        key = ("one", size, colour, shape, row, column)
    elif kind == "count":
        count, colour, shape = rng.choice(list(COUNTS)), rng.choice(list(COLOURS)), \
            rng.choice(SHAPES)
        cells = rng.sample([(r, c) for r in range(3) for c in range(3)], count)
        shapes = [(shape, colour, _cell_centre(rng, r, c), SIZES["small"]) for r, c in cells]
        captions = describe_count(count, colour, shape)
        key = ("count", count, colour, shape)
    else:
        while True:
            one = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
            two = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
            if one != two:
                break
        relation = rng.choice(("left of", "right of", "above", "below"))
        fixed = rng.randrange(3)                     # the shared row (or column)
        near, far = sorted(rng.sample(range(3), 2))
        if relation in ("left of", "right of"):
            ca, cb = (fixed, near), (fixed, far)
            if relation == "right of":
                ca, cb = cb, ca
        else:
            ca, cb = (near, fixed), (far, fixed)
            if relation == "below":
                ca, cb = cb, ca
        shapes = [(one[1], one[0], _cell_centre(rng, *ca), SIZES["small"]),
                  (two[1], two[0], _cell_centre(rng, *cb), SIZES["small"])]
        captions = describe_pair(one, relation, two)
        key = ("pair", one, relation, two)
    return key, shapes, captions


def render(shapes, size: int, rng: random.Random):
    """The scene as a ``size × size`` RGB image on a light, slightly tinted background."""
    from PIL import Image, ImageDraw

    background = tuple(rng.randint(225, 250) for _ in range(3))
    image = Image.new("RGB", (RENDER, RENDER), background)
    draw = ImageDraw.Draw(image)
    for shape, colour, centre, half in shapes:
        draw_shape(draw, shape, colour, centre, half)
    return image.resize((size, size), Image.LANCZOS)


def held_out(key) -> bool:
    """Whether a canonical description belongs to the test split alone (a fixed fifth)."""
    return int(hashlib.sha256(repr(key).encode()).hexdigest(), 16) % 5 == 0


def make_scenes(out: Path, counts: dict[str, int], *, captions: int = 3, size: int = 64,
                seed: int = 0) -> dict[str, str]:
    """Render the splits into ``out`` (see the module docstring); returns {split: TSV}."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {split: [] for split in counts}
    made = {split: 0 for split in counts}
    while any(made[s] < counts[s] for s in counts):
        key, shapes, texts = random_scene(rng)
        if held_out(key):
            split = "test" if made.get("test", 1) < counts.get("test", 0) else None
        else:
            open_splits = [s for s in ("train", "valid") if s in counts and made[s] < counts[s]]
            split = open_splits[0] if len(open_splits) == 1 else (
                rng.choices(open_splits, weights=[counts[s] for s in open_splits])[0]
                if open_splits else None)
        if split is None:
            continue
        name = f"images/{split}_{made[split]:05d}.png"
        render(shapes, size, rng).save(out / name)
        for text in rng.sample(texts, min(captions, len(texts))):
            lines[split].append(f"{name}\t{text}")
        made[split] += 1
    paths = {}
    for split, rows in lines.items():
        paths[split] = str(out / f"{split}.tsv")
        (out / f"{split}.tsv").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/scenes", help="folder to write")
    parser.add_argument("--train", type=int, default=4000, help="training scenes")
    parser.add_argument("--valid", type=int, default=300, help="validation scenes")
    parser.add_argument("--test", type=int, default=500, help="test scenes (unseen kinds)")
    parser.add_argument("--captions", type=int, default=3, help="captions per scene")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = make_scenes(Path(args.out), {"train": args.train, "valid": args.valid,
                                         "test": args.test}, captions=args.captions,
                        size=args.size, seed=args.seed)
    print("\n".join(f"{split}: {path}" for split, path in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the captioner reads: images of every mode as they look, and references in the case
the model writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rnnkit.data.images import load_image
from rnnkit.tasks.captioner import bleu, caption_set
from rnnkit.data import build_tokenizer


def _pixel(path) -> list[int]:
    return load_image(path, 4)[:, 2, 2].tolist()


def test_sixteen_bit_and_float_grey_are_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), "F").save(tmp_path / "f.tiff")
    assert _pixel(tmp_path / "g16.png") == [117] * 3                  # 30000 / 65535 × 255
    assert _pixel(tmp_path / "f.tiff") == [128] * 3                   # 0.5 of white


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200                              # red under a fully transparent layer
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert _pixel(tmp_path / "clear.png") == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    picture = np.zeros((8, 8, 3), dtype=np.uint8)
    picture[:, :4] = 255                            # white on the left, as stored
    image = Image.fromarray(picture)
    exif = image.getexif()
    exif[0x0112] = 3                                # shown turned by 180°: white on the right
    image.save(tmp_path / "turned.jpg", exif=exif, quality=100)
    seen = load_image(tmp_path / "turned.jpg", 8).float().mean(0)     # (8, 8)
    assert seen[:, 6:].mean() > 200 > 50 > seen[:, :2].mean()


def test_lowercased_captions_are_scored_against_lowercased_references(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "c.tsv").write_text("a.png\tThe Big Red Square Here\na.png\tA Red Square\n",
                                    encoding="utf-8")
    tokenizer = build_tokenizer("word", ["the big red square here", "a red square"],
                                min_count=1)
    data = caption_set(str(tmp_path / "c.tsv"), "", tokenizer, image_size=8, features="",
                       lowercase=True)
    assert data.references == [["the big red square here", "a red square"]]
    assert bleu(["the big red square here"], data.references)["bleu"] == pytest.approx(100.0)

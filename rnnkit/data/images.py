"""Reading a captioner's data: captions TSVs, images, precomputed feature files.

Every reader raises ``ValueError`` naming the file (and line) of input that does not fit,
saying what was expected, before a model directory is written.

- **Captions** (:func:`read_captions`): ``image<TAB>caption`` per line, several lines per
  image allowed; the image is a path relative to the TSV's own folder (or to ``images``),
  or absolute. A first line ``image<TAB>…`` is a header and skipped. An image that does
  not exist is an error naming the TSV and the line.
- **Images** (:func:`load_image`): any format Pillow decodes, converted to RGB and resized
  to a fixed ``size × size`` (bilinear, aspect ratio not kept) -> uint8 (3, size, size).
  A file that does not decode is an error naming it; one of more than
  ``MAX_IMAGE_PIXELS`` pixels is refused before it is decoded.
- **Features** (:func:`read_features`): a safetensors file holding one float tensor per
  image, named by the image's name as the TSV writes it, each ``(D,)`` (one vector),
  ``(L, D)`` (L positions) or ``(h, w, D)`` (a map, read as ``h·w`` positions); all of one
  shape. Shapes are checked from the file's header before any tensor is read (at most
  ``MAX_SIZE`` features, ``MAX_POSITIONS`` positions), so a file never makes rnnkit
  allocate more than it holds. Data only: nothing in it is executed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnkit.config import MAX_SIZE
from rnnkit.data.text import iter_lines

MAX_IMAGE_PIXELS = 50_000_000      # larger images are refused before decoding
MAX_IMAGE_SIZE = 1024              # the largest --image-size
MAX_POSITIONS = 16_384             # positions of one image's feature map
FEATURE_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class Caption:
    """One line of a captions TSV: the image as written (``name``), its path, the caption,
    the 1-based line number."""

    name: str
    path: str
    text: str
    line: int


def read_captions(path: str | os.PathLike, images: str | os.PathLike | None = None, *,
                  check_images: bool = True) -> list[Caption]:
    """The captions of an ``image<TAB>caption`` TSV (see the module docstring); image names
    are relative to ``images`` (default: the TSV's folder). With ``check_images`` a name
    whose file does not exist is an error naming the TSV and line (off for features read
    from a file, where the image itself need not exist)."""
    path = os.fspath(path)
    base = os.fspath(images) if images else os.path.dirname(os.path.abspath(path))
    captions: list[Caption] = []
    for n, raw in enumerate(iter_lines(path), start=1):
        if n == 1 and raw.split("\t", 1)[0].strip().lower() == "image" and "\t" in raw:
            continue                                                    # header
        where = f"{path}, line {n}"
        if not raw.strip():
            raise ValueError(f"{where}: empty line; expected 'image<TAB>caption'")
        if "\t" not in raw:
            raise ValueError(f"{where}: no tab; expected 'image<TAB>caption'")
        name, text = (part.strip() for part in raw.split("\t", 1))
        if not name or not text:
            raise ValueError(f"{where}: empty {'image name' if not name else 'caption'}; "
                             f"expected 'image<TAB>caption'")
        image = os.path.join(base, name)
        if check_images and not os.path.isfile(image):
            raise ValueError(f"{where}: image {name!r} not found (looked for {image})")
        captions.append(Caption(name, image, text, n))
    if not captions:
        raise ValueError(f"{path}: no captions; expected 'image<TAB>caption' lines")
    return captions


def _as_rgb(image):
    """8-bit RGB as the image is seen: turned by its EXIF orientation; 16-bit and float
    grey scaled to 0…255 (``convert`` would clip them); transparency composited on white."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else \
            (1.0 if image.mode == "F" and values.max(initial=0) <= 1.0 else
             max(float(values.max(initial=0)), 1.0))
        grey = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and
                                              "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, size: int) -> Tensor:
    """An image file -> uint8 (3, size, size): RGB, resized (bilinear) to ``size × size``.

    Raises ValueError naming the file when it is missing, does not decode, or has more
    than MAX_IMAGE_PIXELS pixels.
    """
    from PIL import Image

    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{path}: {image.width}x{image.height} pixels, more than "
                                 f"the {MAX_IMAGE_PIXELS:,} rnnkit decodes")
            rgb = _as_rgb(image).resize((size, size), Image.BILINEAR)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such image file") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not an image Pillow can decode ({error})") from None
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()       # (3, S, S)


def load_images(paths: list[str], size: int) -> Tensor:
    """Image files -> uint8 (N, 3, size, size) (see :func:`load_image`)."""
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for k, path in enumerate(paths):
        out[k] = load_image(path, size)
    return out


def feature_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape every tensor of a features file has, read from its header alone and
    checked (see the module docstring)."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such features file")
    try:
        with safe_open(path, framework="pt") as f:
            names = list(f.keys())
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in names}
            dtypes = {name: f.get_slice(name).get_dtype() for name in names}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a safetensors file of features ({error})") from None
    if not names:
        raise ValueError(f"{path}: holds no features")
    first = names[0]
    shape = shapes[first]
    for name in names:
        if dtypes[name] not in FEATURE_DTYPES:
            raise ValueError(f"{path}: features {name!r} are {dtypes[name]}; expected "
                             f"floats ({', '.join(FEATURE_DTYPES)})")
        if shapes[name] != shape:
            raise ValueError(f"{path}: features {name!r} have shape {list(shapes[name])} but "
                             f"{first!r} has {list(shape)}; expected one shape for all")
    if not 1 <= len(shape) <= 3 or not all(n >= 1 for n in shape):
        raise ValueError(f"{path}: features of shape {list(shape)}; expected (D,), (L, D) "
                         f"or (h, w, D)")
    positions = math.prod(shape[:-1])
    if shape[-1] > MAX_SIZE or positions > MAX_POSITIONS:
        raise ValueError(f"{path}: features of shape {list(shape)}; rnnkit reads at most "
                         f"{MAX_SIZE:,} features at each of at most {MAX_POSITIONS:,} "
                         f"positions")
    return shape


def feature_grid(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The (h, w) grid of features of this shape, for drawing attention: a map's own, a
    square number of positions as a square; None otherwise."""
    if len(shape) == 3:
        return shape[0], shape[1]
    positions = shape[0] if len(shape) == 2 else 1
    side = math.isqrt(positions)
    return (side, side) if side * side == positions and positions > 1 else None


def read_features(path: str | os.PathLike, names: list[str],
                  where=None) -> Tensor:
    """The features of ``names`` from a features file -> float32 (N, L, D), in order.

    ``where(k)`` names the line that asked for ``names[k]`` (for the error when the file
    has no such tensor); shapes are checked first (:func:`feature_shape`).
    """
    from safetensors import safe_open

    path = os.fspath(path)
    shape = feature_shape(path)
    positions = math.prod(shape[:-1]) if len(shape) > 1 else 1
    out = torch.empty(len(names), positions, shape[-1], dtype=torch.float32)
    with safe_open(path, framework="pt") as f:
        known = set(f.keys())
        for k, name in enumerate(names):
            if name not in known:
                said = where(k) if where is not None else f"image {name!r}"
                raise ValueError(f"{said}: no features of {name!r} in {path}")
            out[k] = f.get_tensor(name).reshape(positions, shape[-1]).float()
    if not torch.isfinite(out).all():
        raise ValueError(f"{path}: features that are not finite numbers (inf or nan)")
    return out

"""``rnnkit caption DIR IMAGES…``: caption images with a trained captioner, and draw the
attention of each word over the image."""

from __future__ import annotations

import json
import os
import sys

from rnnkit.cli.parsing import device_and_json, model_command


def run_caption(args) -> int:
    from rnnkit.tasks.captioner import caption_images, plot_attention

    if args.beam < 1:
        raise ValueError(f"--beam: expected >= 1, got {args.beam}")
    if args.attention and os.path.exists(args.attention) and not os.path.isdir(args.attention):
        raise ValueError(f"--attention: {args.attention} is a file; expected a folder for "
                         f"the pictures")
    captions = caption_images(args.model, args.images, beam=args.beam,
                              length_penalty=args.length_penalty, features=args.features,
                              device=args.device, log=lambda text: print(text, file=sys.stderr))
    if args.json:
        print(json.dumps([{"image": i, "caption": c} for i, c in zip(args.images, captions)],
                         indent=2, ensure_ascii=False))
    else:
        print("\n".join(f"{i}\t{c}" for i, c in zip(args.images, captions)))
    if args.attention:
        os.makedirs(args.attention, exist_ok=True)
        taken: dict[str, int] = {}
        for image in args.images:              # a.png, a-2.png, … for images of one name
            stem = os.path.splitext(os.path.basename(image))[0]
            taken[stem] = taken.get(stem, 0) + 1
            suffix = "" if taken[stem] == 1 else f"-{taken[stem]}"
            png = os.path.join(args.attention, f"{stem}{suffix}.png")
            text = plot_attention(args.model, image, png, features=args.features,
                                  device=args.device)
            print(f"attention of {image} (greedy: {text!r}): {png}", file=sys.stderr)
    return 0


def add_commands(commands) -> None:
    """The parser of ``rnnkit caption``."""
    cap = model_command(commands, "caption", "caption images with a trained captioner",
                        "Caption each image (any format Pillow reads; a model of "
                        "precomputed features: the images' names in its features file) with "
                        "beam search (or greedy with --beam 1) and print 'IMAGE<TAB>caption' "
                        "lines.", run_caption, model_help="captioner model directory")
    cap.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    cap.add_argument("--beam", type=int, default=5, help="beam width (default 5; 1: greedy)")
    cap.add_argument("--length-penalty", type=float, default=1.0,
                     help="hypothesis score = log p / length ** this (default 1)")
    cap.add_argument("--features", metavar="FILE",
                     help="features model: the safetensors file of the images' features "
                     "(default: the one it was trained with)")
    cap.add_argument("--attention", metavar="FOLDER",
                     help="also draw each image's greedy caption with the attention of each "
                     "word over the image, as FOLDER/IMAGE_NAME.png")
    device_and_json(cap, "print JSON")

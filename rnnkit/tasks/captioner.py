"""Image captioning (one-to-many), end to end: train, evaluate (BLEU with sacrebleu against
every reference caption of an image), caption images, draw the attention of each word.

The Python API behind ``rnnkit train captioner``, ``rnnkit eval`` and ``rnnkit caption``::

    from rnnkit.tasks import captioner
    captioner.train_captioner(captioner.CaptionDataConfig(data="data/scenes"),
                              {"hidden_size": 256}, TrainConfig(epochs=10), out="runs/cap")
    captioner.evaluate_file("runs/cap", "data/scenes/test.tsv", beam=5)   # {"bleu": …}
    captioner.caption_images("runs/cap", ["photo.png"], beam=5)          # ["a red …"]
    captioner.plot_attention("runs/cap", "photo.png", "attention.png")

Data: a folder of ``{split}.tsv`` captions files (split names with train, val/valid/dev,
test), ``image<TAB>caption`` per line and several lines per image, the images beside them
(see :mod:`rnnkit.data.images`); or ``train`` and ``valid`` TSVs. Images are decoded once,
resized to ``image_size × image_size`` and kept in memory as bytes; with ``features``, a
safetensors file of vectors a vision model computed for each image replaces the images
(and the convolutional encoder). Captions are split at whitespace into words; the words
of the training captions form the vocabulary (rarer than ``min_count``: ``<unk>``).

Training teacher-forces every (image, caption) pair; the model kept is the one with the
lowest validation loss, and the run ends with BLEU of its greedy captions of the
validation images. BLEU is sacrebleu's corpus BLEU (default 13a tokenization) of one
caption per image against all of that image's captions as references.
"""

from __future__ import annotations

import dataclasses

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit import checkpoint
from rnnkit.config import check_fields, field_default, option, MAX_DECODED_BYTES
from rnnkit.data import build_tokenizer, load_tokenizer
from rnnkit.data.images import (MAX_IMAGE_SIZE, Caption, feature_grid, feature_shape,
                                load_images, read_captions, read_features)
from rnnkit.data.stream import ExampleBatches
from rnnkit.models.captioner import Captioner, CaptionerConfig
from rnnkit.models.seq2seq import (BOS_ID, EOS_ID, PAD_ID, TranslationSearch,
                                   greedy_decode)
from rnnkit.tasks import recipe
from rnnkit.tasks.common import device_of, encode_bounded, find_split_file, length_batches
from rnnkit.tasks.translator import collate_pairs
from rnnkit.train import TrainConfig
from rnnkit.train.distributed import SINGLE
from rnnkit.train.metrics import perplexity

TASK = "captioner"
MAX_CAPTION_TOKENS = 50           # a caption searched for stops here (with a note)
MAX_IMAGE_BYTES = MAX_DECODED_BYTES     # the decoded images of one captions file, at most


@dataclass(frozen=True)
class CaptionDataConfig:
    """Where the captions and images come from, and how they are read and batched."""

    data: str = option("", "folder of {split}.tsv captions (image<TAB>caption) and images")
    train: str = option("", "training captions TSV (with --valid, instead of --data)")
    valid: str = option("", "validation captions TSV")
    images: str = option("", "folder the TSVs' image names are relative to (default: each "
                         "TSV's own folder)")
    features: str = option("", "precomputed features instead of images: a safetensors file, "
                           "one tensor per image named as in the TSVs, (D,), (L, D) or "
                           "(h, w, D)")
    image_size: int = option(64, "images are resized to SIZE x SIZE pixels")
    lowercase: bool = option(False, "lowercase the captions")
    min_count: int = option(1, "rarer words become <unk>")
    batch_size: int = option(32, "captions per batch")

    path_fields = ("data", "train", "valid", "images", "features")   # made absolute in run.json

    def __post_init__(self):
        check_fields(self, [
            ("image_size", lambda c: 2 <= c.image_size <= MAX_IMAGE_SIZE,
             f"an int >= 2 and at most {MAX_IMAGE_SIZE}"),
            ("min_count", lambda c: c.min_count >= 1, "an int >= 1"),
            ("batch_size", lambda c: c.batch_size >= 1, "an int >= 1"),
        ])
        if self.data and (self.train or self.valid):
            raise ValueError("data: give --data or --train/--valid, not both")
        if not self.data and not (self.train and self.valid):
            raise ValueError("data: expected a folder of captions TSVs, or both train and "
                             "valid TSVs")


# -- data ---------------------------------------------------------------------------------

def find_captions_file(cfg: CaptionDataConfig, split: str) -> str | None:
    """The captions TSV of "train", "valid" or "test" (None if a folder has no test file)."""
    explicit = {"train": cfg.train, "valid": cfg.valid}.get(split)
    if explicit or not cfg.data:
        return explicit or None
    if not os.path.isdir(cfg.data):
        raise ValueError(f"{cfg.data}: no such folder (expected train/valid captions TSVs)")
    found = find_split_file(cfg.data, split, ".tsv")
    if found is None and split != "test":
        raise ValueError(f"{cfg.data}: no {split} captions (a file named like {split}.tsv)")
    return found


@dataclass
class CaptionSet:
    """Captions of a split, encoded, with the inputs of their images.

    ``inputs``: uint8 images (N, 3, S, S) or float features (N, L, D) — one per distinct
    image; ``image_of[k]``: the image of caption k; ``ids[k]``: its word ids ending with
    ``<eos>``; ``names[i]`` and ``references[i]``: image i's name and captions (raw text).
    """

    inputs: Tensor
    image_of: list[int]
    ids: list[list[int]]
    names: list[str]
    references: list[list[str]]


def _text(text: str, lowercase: bool) -> str:
    return text.lower() if lowercase else text


def read_inputs(captions: list[Caption], path: str, *, image_size: int,
                features: str = "") -> tuple[Tensor, list[int], list[str], list[list[str]]]:
    """The distinct images of a captions file, in order of first mention: (their inputs —
    uint8 images (N, 3, S, S), or with ``features`` float (N, L, D) —, the image of each
    caption, the image names, each image's captions)."""
    index: dict[str, int] = {}
    first: list[Caption] = []
    references: list[list[str]] = []
    for c in captions:
        if c.name not in index:
            index[c.name] = len(first)
            first.append(c)
            references.append([])
        references[index[c.name]].append(c.text)
    image_of = [index[c.name] for c in captions]
    if not features and len(first) * 3 * image_size ** 2 > MAX_IMAGE_BYTES:
        raise ValueError(f"{path}: {len(first):,} images of {image_size}x{image_size} "
                         f"pixels would take {len(first) * 3 * image_size ** 2 / 2**30:.1f} "
                         f"GiB in memory, more than the {MAX_IMAGE_BYTES / 2**30:.0f} GiB "
                         f"rnnkit keeps; use a smaller --image-size, or --features")
    if features:
        inputs = read_features(features, [c.name for c in first],
                               lambda k: f"{path}, line {first[k].line}")
    else:
        inputs = load_images([c.path for c in first], image_size)
    return inputs, image_of, [c.name for c in first], references


def caption_set(path: str, images: str, tokenizer, *, image_size: int, features: str,
                lowercase: bool) -> CaptionSet:
    """A captions TSV read (image names relative to ``images``, default the TSV's folder),
    its images decoded (or features read) and its captions encoded as word ids."""
    captions = read_captions(path, images or None, check_images=not features)
    captions = [dataclasses.replace(c, text=_text(c.text, lowercase)) for c in captions]
    inputs, image_of, names, references = read_inputs(captions, path, image_size=image_size,
                                                      features=features)
    ids = encode_bounded([c.text for c in captions], tokenizer.encode_lines,
                         lambda k: f"{path}, line {captions[k].line}", "a captioner")
    return CaptionSet(inputs, image_of, ids, names, references)


def collate_captions(data: CaptionSet, indices: list[int]):
    """Captions ``indices`` -> (inputs of their images (B, …), target inputs (T, B) =
    ``<eos>`` then y_1..y_{n-1}, target outputs (T, B) = y_1..y_n, padded with 0)."""
    _, _, tgt_in, tgt_out = collate_pairs([[EOS_ID]] * len(indices),
                                          [data.ids[k] for k in indices])
    images = torch.tensor([data.image_of[k] for k in indices], dtype=torch.long)
    return data.inputs[images], tgt_in, tgt_out


class CaptionTask:
    """The captioning task for :class:`rnnkit.train.Trainer`."""

    name = TASK
    unit = "tok"
    world = SINGLE

    def __init__(self, model: Captioner, train: CaptionSet, valid: CaptionSet,
                 cfg: CaptionDataConfig, seed: int, device, tokenizer):
        self.model, self.train, self.valid, self.device = model, train, valid, device
        self.tokenizer = tokenizer
        self.batches = ExampleBatches(len(train.ids), cfg.batch_size,
                                      lengths=[len(t) for t in train.ids], seed=seed,
                                      collate=lambda indices: collate_captions(train, indices))

    def train_loss(self, batch):
        """Mean token NLL of a batch (inputs (B, …), target inputs and outputs (T, B)),
        and its number of caption tokens."""
        inputs, tgt_in, tgt_out = batch
        logits = self.model(inputs.to(self.device), tgt_in.to(self.device))
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.to(self.device).flatten(),
                               ignore_index=PAD_ID)
        return loss, int((tgt_out != PAD_ID).sum())

    def evaluate(self, split: str) -> dict:
        """Teacher-forced loss and perplexity of every validation caption."""
        captions = self.world.share(list(range(len(self.valid.ids))))   # this process's share
        total, count = self.world.sum(*teacher_forced_nll(self.model, self.valid,
                                                          self.device, captions))
        return {"loss": total / count, "ppl": perplexity(total / count)}

    def describe(self, m: dict) -> str:
        """See :func:`describe_metrics`."""
        return describe_metrics(m)


@torch.no_grad()
def teacher_forced_nll(model: Captioner, data: CaptionSet, device, captions=None,
                       batch_size: int = 64) -> tuple[float, int]:
    """Total NLL (nats, float64) and count of caption tokens (``<eos>`` included) of the
    captions ``captions`` (indices; default all), teacher forced, in padded batches."""
    model.eval()
    captions = list(range(len(data.ids))) if captions is None else list(captions)
    total, count = 0.0, 0
    for chunk in length_batches([len(data.ids[k]) for k in captions], batch_size):
        inputs, tgt_in, tgt_out = collate_captions(data, [captions[i] for i in chunk])
        logits = model(inputs.to(device), tgt_in.to(device))
        total += F.cross_entropy(logits.flatten(0, 1).double(), tgt_out.to(device).flatten(),
                                 ignore_index=PAD_ID, reduction="sum").item()
        count += int((tgt_out != PAD_ID).sum())
    return total, count


def describe_metrics(m: dict) -> str:
    """One line: "loss 0.6123, ppl 1.84[, BLEU 61.20]"."""
    s = f"loss {m['loss']:.4f}, ppl {m['ppl']:.2f}"
    return s + (f", BLEU {m['bleu']:.2f}" if "bleu" in m else "")


# -- training -----------------------------------------------------------------------------

def _conv_layers(options: dict) -> int:
    """The number of convolutional blocks the model options give (or the default)."""
    field, = (f for f in fields(CaptionerConfig) if f.name == "conv_layers")
    return options.get("conv_layers", field_default(field))


def prepare(cfg: CaptionDataConfig, options: dict, out: Path, *, resume: bool,
            log) -> recipe.Prepared:
    """The captions of a run (images decoded, or features read), its vocabulary (built
    from the training captions, or loaded on resume), encoded."""
    if not cfg.features and cfg.image_size < 2 ** _conv_layers(options):
        raise ValueError(f"image_size: {cfg.image_size} pixels is too small for "
                         f"{_conv_layers(options)} convolutional blocks (each halves the "
                         f"side); expected at least {2 ** _conv_layers(options)}")
    train_path, valid_path = find_captions_file(cfg, "train"), find_captions_file(cfg, "valid")
    shape = feature_shape(cfg.features) if cfg.features else None
    train_captions = read_captions(train_path, cfg.images or None,
                                   check_images=not cfg.features)
    if resume:
        tokenizer = load_tokenizer(out)
    else:
        tokenizer = build_tokenizer("word", [_text(c.text, cfg.lowercase)
                                             for c in train_captions],
                                    min_count=cfg.min_count)
    common = dict(image_size=cfg.image_size, features=cfg.features, lowercase=cfg.lowercase)
    log(f"reading the images of {train_path} and {valid_path}" if not cfg.features else
        f"reading the features of {train_path} and {valid_path} from {cfg.features}")
    train = caption_set(train_path, cfg.images, tokenizer, **common)
    valid = caption_set(valid_path, cfg.images, tokenizer, **common)
    grid = feature_grid(shape) if shape else None
    inputs = (f"features {list(shape)} from {cfg.features}" if shape else
              f"images {cfg.image_size}x{cfg.image_size}")
    return recipe.Prepared(
        sizes={"vocab_size": tokenizer.vocab_size, "feature_size": shape[-1] if shape else 0},
        files={"": tokenizer},
        config={"image_size": cfg.image_size, "lowercase": cfg.lowercase,
                "features": os.path.abspath(cfg.features) if cfg.features else "",
                "grid": list(grid) if grid else None},
        report=f"vocabulary {tokenizer.vocab_size:,} words; {inputs}; train "
               f"{len(train.ids):,} captions of {len(train.names):,} images, valid "
               f"{len(valid.ids):,} of {len(valid.names):,}",
        make_task=lambda model, seed, device: CaptionTask(model, train, valid, cfg, seed,
                                                          device, tokenizer))


def describe_model(cfg: CaptionerConfig) -> str:
    """One line about the architecture: "CNN 3 blocks of 16..64 channels, lstm decoder
    1x256, additive attention"."""
    encoder = (f"features of size {cfg.feature_size}" if cfg.feature_size else
               f"CNN {cfg.conv_layers} blocks of {cfg.conv_channels}.."
               f"{cfg.conv_channels * 2 ** (cfg.conv_layers - 1)} channels")
    return (f"{encoder}, {cfg.cell} decoder {cfg.decoder_layers}x{cfg.hidden_size}, "
            f"{cfg.attention} attention")


def score_greedy_captions(task: CaptionTask, summary: dict, train_cfg, log) -> None:
    """After training, add BLEU of the best model's greedy captions of the validation
    images to the summary's "valid" figures."""
    if "valid" not in summary:
        return
    hyps = caption_inputs(task.model, task.valid.inputs, task.tokenizer, beam=1)
    scores = bleu(hyps, task.valid.references)
    summary["valid"].update(scores)
    log(f"best model, greedy on valid: BLEU {scores['bleu']:.2f} "
        f"({len(hyps):,} images)")


def train_captioner(data_cfg: CaptionDataConfig | None, model_options: dict | None,
                    train_cfg: TrainConfig | dict | None, out: str | Path, **options) -> dict:
    """Train a captioner into ``out``: see :func:`rnnkit.tasks.recipe.train` for the
    arguments; ``model_options`` are :class:`CaptionerConfig` fields other than
    ``vocab_size`` and ``feature_size``. The summary's "valid" figures add BLEU."""
    return recipe.train(SPEC, data_cfg, model_options, train_cfg, out, **options)


# -- using a trained model ----------------------------------------------------------------

def load_captioner(directory: str | Path, device: str | None = "cpu"):
    """(model in eval mode, tokenizer, config) of a captioner directory."""
    config = checkpoint.read_config(directory, TASK)
    size, lowercase = config.get("image_size"), config.get("lowercase")
    if not (isinstance(size, int) and 2 <= size <= MAX_IMAGE_SIZE
            and isinstance(lowercase, bool)):
        raise ValueError(f"{Path(directory) / checkpoint.CONFIG}: expected 'image_size' (an "
                         f"int in [2, {MAX_IMAGE_SIZE}]) and 'lowercase' (true or false), got "
                         f"{size!r} and {lowercase!r}")
    tokenizer = load_tokenizer(directory)
    model = recipe.load_model(SPEC, directory, config, device,
                              {"vocab_size": tokenizer.vocab_size})
    return model, tokenizer, config


def features_file(config: dict, model: Captioner, features: str | None) -> str:
    """The features file a model of features reads: ``features``, else the one it was
    trained with; its features checked to be of the model's size."""
    path = features or config.get("features") or ""
    if not path:
        raise ValueError("features: this model reads precomputed features; name the file")
    shape = feature_shape(path)
    if shape[-1] != model.config.feature_size:
        raise ValueError(f"{path}: features of size {shape[-1]}, but the model reads "
                         f"{model.config.feature_size}")
    return path


def model_inputs(config: dict, model: Captioner, images: list[str], *,
                 features: str | None = None) -> Tensor:
    """The inputs of a trained model for ``images``: the files decoded and resized
    (uint8 (N, 3, S, S)); or, for a model of features, their features (N, L, D) from
    ``features`` (default: the file it was trained with), looked up by name as given, else
    by file name alone."""
    if not model.config.feature_size:
        return load_images(images, config["image_size"])
    path = features_file(config, model, features)
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        known = set(f.keys())
    names = [name if name in known or os.path.basename(name) not in known
             else os.path.basename(name) for name in images]
    return read_features(path, names)


def caption_inputs(model: Captioner, inputs: Tensor, tokenizer, *, beam: int = 5,
                   length_penalty: float = 1.0, max_tokens: int = MAX_CAPTION_TOKENS,
                   batch_size: int = 64, log=None) -> list[str]:
    """Images (N, 3, S, S) or features (N, L, D) -> a caption each. ``beam=1`` decodes
    greedily in batches (:func:`rnnkit.models.seq2seq.greedy_decode`); a wider beam
    searches each image with :func:`rnnkit.generate.beam_search` through the translator's
    search (scores divided by length ** ``length_penalty``). A caption stops at
    ``max_tokens`` words (a note says how many did)."""
    from rnnkit.generate import beam_search

    model.eval()
    device = model.output.weight.device
    out: list[list[int]] = []
    capped = 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size if beam == 1 else 1):
            chunk = inputs[start:start + (batch_size if beam == 1 else 1)].to(device)
            encoded = model.encode(chunk)
            if beam == 1:
                ids, _ = greedy_decode(model, *encoded, max_tokens, weights=False)
                capped += sum(len(row) >= max_tokens for row in ids)
                out.extend(row[:max_tokens] for row in ids)
                continue
            hyps = beam_search(TranslationSearch(model, encoded=encoded), [BOS_ID],
                               beam_size=beam, max_tokens=max_tokens, eos_id=EOS_ID,
                               length_penalty=length_penalty)
            ids = hyps[0][0]
            capped += ids[-1] != EOS_ID
            out.append(ids[:-1] if ids[-1] == EOS_ID else ids)
    if capped and log is not None:
        log(f"note: {capped} caption(s) reached {max_tokens} tokens and were cut there")
    return [tokenizer.decode(ids).strip() for ids in out]


def caption_images(directory: str | Path, images: list[str], *, beam: int = 5,
                   length_penalty: float = 1.0, features: str | None = None,
                   device: str | None = "cpu", log=None) -> list[str]:
    """Caption image files with a trained model (a model of features: the images' names,
    looked up in ``features``)."""
    model, tokenizer, config = load_captioner(directory, device)
    inputs = model_inputs(config, model, images, features=features)
    return caption_inputs(model, inputs, tokenizer, beam=beam, length_penalty=length_penalty,
                          log=log)


def bleu(hypotheses: list[str], references: list[list[str]]) -> dict:
    """Corpus BLEU (sacrebleu, default settings) of one caption per image against all of
    that image's references (images with fewer references leave the others out)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    most = max(len(r) for r in references)
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(most)]
    return {"bleu": metric.corpus_score(hypotheses, streams).score,
            "signature": str(metric.get_signature())}


def evaluate_file(directory: str | Path, path: str | Path, *, beam: int = 5,
                  length_penalty: float = 1.0, features: str | None = None,
                  images: str | None = None, device: str | None = "cpu", log=None) -> dict:
    """Loss/perplexity (teacher forced, every caption) and BLEU of the model's caption of
    each image of a captions TSV against all of its captions."""
    model, tokenizer, config = load_captioner(directory, device)
    path = str(path)
    features = features_file(config, model, features) if model.config.feature_size else ""
    data = caption_set(path, images or "", tokenizer, image_size=config["image_size"],
                       features=features, lowercase=config["lowercase"])
    total, count = teacher_forced_nll(model, data, device_of(device))
    hyps = caption_inputs(model, data.inputs, tokenizer, beam=beam,
                          length_penalty=length_penalty, log=log)
    return {"loss": total / count, "ppl": perplexity(total / count), "images": len(hyps),
            "captions": len(data.ids), "beam": beam,
            **bleu(hyps, data.references), "file": path}


def attention_maps(model: Captioner, inputs: Tensor, grid: tuple[int, int] | None,
                   max_tokens: int = MAX_CAPTION_TOKENS):
    """One image or features (1, …) -> its greedy caption's ids and each word's attention
    over the image as maps (T, h, w) (the words, then ``<eos>`` if it was reached)."""
    with torch.no_grad():
        memory, mask, state = model.encode(inputs.to(model.output.weight.device))
        if grid is None:
            _, grid = model.annotations(inputs[:1].to(model.output.weight.device))
        ids, weights = greedy_decode(model, memory, mask, state, max_tokens)
    steps = min(len(ids[0]) + 1, weights.shape[0])
    return ids[0], weights[:steps, 0].reshape(steps, *grid).cpu()


def plot_attention(directory: str | Path, image: str, path: str | Path, *,
                   features: str | None = None, device: str | None = "cpu",
                   columns: int = 5) -> str:
    """Caption one image greedily and draw, for each word, the image with the word's
    attention laid over it (brighter: more attention; each word's map scaled to its own
    largest weight), as a PNG; returns the caption."""
    from rnnkit.data.images import load_image
    from rnnkit.plotting import new_figure, save_figure

    model, tokenizer, config = load_captioner(directory, device)
    grid = None
    if model.config.feature_size:
        grid = tuple(config["grid"]) if config.get("grid") else None
        if grid is None:
            raise ValueError(f"{directory}: the model's features have no (h, w) grid, so "
                             f"their attention cannot be drawn over the image")
    inputs = model_inputs(config, model, [image], features=features)
    ids, maps = attention_maps(model, inputs, grid)
    words = [tokenizer.decode([i]) for i in ids] + ["<eos>"]
    shown = load_image(image, max(config["image_size"], 128)).permute(1, 2, 0).numpy()
    panels = 1 + len(maps)
    rows = math.ceil(panels / columns)
    fig, _ = new_figure(2.2 * min(panels, columns), 2.6 * rows + 0.3)
    fig.clf()                                         # one panel per word, made below
    side = shown.shape[0]
    for k in range(panels):
        ax = fig.add_subplot(rows, min(panels, columns), k + 1)
        ax.imshow(shown, extent=(0, side, side, 0))
        if k:
            weights = maps[k - 1][None, None]
            up = F.interpolate(weights, size=(side, side), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
            ax.imshow(up / max(float(up.max()), 1e-12), cmap="gray", alpha=0.65,
                      extent=(0, side, side, 0), vmin=0, vmax=1)
        ax.set_title("image" if k == 0 else words[k - 1], fontsize=10)
        ax.axis("off")
    text = tokenizer.decode(ids).strip()
    fig.suptitle(text if len(text) < 80 else text[:77] + "…", fontsize=10)
    save_figure(fig, path)
    return text


# -- the declaration ------------------------------------------------------------------------

def _evaluate(directory, path, *, beam: int = 5, device: str = "cpu", log=None,
              **_) -> dict:
    return evaluate_file(directory, path, beam=beam, device=device, log=log)


def evaluation_report(m: dict, path) -> list[str]:
    """``rnnkit eval``'s lines for the figures of :func:`evaluate_file`."""
    return [f"{path}: {describe_metrics(m)}; {m['images']:,} images, {m['captions']:,} "
            f"captions, beam {m['beam']}", f"sacrebleu: {m['signature']}"]


SPEC = recipe.TaskSpec(
    name=TASK, summary="an image captioner (attention over the image, one-to-many)",
    description="Train a captioner of images described by 'image<TAB>caption' TSVs: a small "
    "CNN (or precomputed features), the translator's attentional decoder, teacher forcing.",
    data_config=CaptionDataConfig, model_config=CaptionerConfig, model=Captioner,
    prepare=prepare, describe_model=describe_model,
    train_defaults={"optimizer": "adam", "lr": 2e-3, "clip": 1.0, "lr_decay": 2.0,
                    "epochs": 20, "eval_every": 500},
    finish=score_greedy_captions, evaluate=_evaluate, report=evaluation_report,
    use="rnnkit caption")

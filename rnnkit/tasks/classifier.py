"""Sequence classification (many-to-one), end to end: train, evaluate, predict.

The Python API behind ``rnnkit train classifier``, ``rnnkit eval`` and ``rnnkit predict``::

    from rnnkit.tasks import classifier
    classifier.train_classifier(classifier.ClassifierDataConfig(data="data/sst2"),
                                {"cell": "lstm", "pooling": "max"},
                                TrainConfig(optimizer="adam", lr=1e-3), out="runs/sst2")
    classifier.evaluate_file("runs/sst2", "data/sst2/test.tsv")    # accuracy, macro-F1, …
    classifier.predict_file("runs/sst2", "reviews.txt")            # label + probabilities

Files are ``label<TAB>text`` (see :mod:`rnnkit.data.labelled`); text is split at
whitespace (``lowercase`` optional); words of the training split with at least
``min_count`` occurrences form the vocabulary, the rest are ``<unk>``. Sentences are never
truncated; a line longer than ``rnnkit.config.MAX_INPUT_CHARS`` characters or
``MAX_INPUT_TOKENS`` tokens is refused naming its file and line. The labels are those of the training split: a validation, evaluation or prediction
label outside them is an error naming its file and line. The model kept is the one with the
best validation accuracy (ties: lower loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnkit import checkpoint
from rnnkit.config import option
from rnnkit.data import build_tokenizer, load_tokenizer
from rnnkit.data.labelled import read_labelled
from rnnkit.data.stream import ExampleBatches
from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier
from rnnkit.tasks import recipe
from rnnkit.tasks.pretrained import init_encoder
from rnnkit.tasks.common import (SplitSource, device_of, encode_bounded, error_objective,
                                 labelled_splits, length_batches, pad, split_sources)
from rnnkit.train import TrainConfig
from rnnkit.train.distributed import SINGLE

TASK = "classifier"


@dataclass(frozen=True)
class ClassifierDataConfig(SplitSource):
    """Where the labelled lines come from (see :class:`rnnkit.tasks.common.SplitSource`)
    and how they are batched."""

    lowercase: bool = option(False, "lowercase the text")
    level: str = option("word", "word, or byte-level BPE subwords", choices=("word", "bpe"))
    min_count: int = option(1, "rarer words become <unk> (word level)")
    max_vocab: int = option(0, "keep the most frequent N words (0: all; word level)")
    bpe_vocab_size: int = option(8000, "BPE vocabulary size")
    batch_size: int = option(32, "examples per batch")

    def __post_init__(self):
        self.check_source([
            ("level", lambda c: c.level in ("word", "bpe"), "'word' or 'bpe'"),
            ("bpe_vocab_size", lambda c: c.bpe_vocab_size >= 259, "an int >= 259"),
            ("min_count", lambda c: c.min_count >= 1, "an int >= 1"),
            ("max_vocab", lambda c: c.max_vocab >= 0, "an int >= 0"),
            ("batch_size", lambda c: c.batch_size >= 1, "an int >= 1"),
        ], "'label<TAB>text' lines")


def _text(text: str, lowercase: bool) -> str:
    return text.lower() if lowercase else text


def label_ids(examples, labels: list[str], path: str) -> list[int]:
    """Labels -> class ids; a label the model does not know is an error naming the line."""
    index = {label: k for k, label in enumerate(labels)}
    ids = []
    for e in examples:
        if e.label not in index:
            raise ValueError(f"{path}, line {e.line}: unknown label {e.label!r}; the model "
                             f"knows {labels}")
        ids.append(index[e.label])
    return ids


def sorted_labels(labels) -> list[str]:
    """Labels in numeric order if they are all integers, else in text order."""
    labels = set(labels)
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


# -- metrics ------------------------------------------------------------------------------

def classification_metrics(predicted: list[int], gold: list[int], num_classes: int) -> dict:
    """Accuracy, macro-averaged F1 and the confusion matrix (rows gold, columns predicted).

    Per-class F1 is 2PR/(P+R), 0 for a class that is never predicted correctly; macro-F1
    is their mean over the classes.
    """
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for g, p in zip(gold, predicted):
        confusion[g, p] += 1
    correct = confusion.diag().double()
    precision = correct / confusion.sum(0).clamp(min=1)
    recall = correct / confusion.sum(1).clamp(min=1)
    f1 = torch.where(correct > 0, 2 * precision * recall / (precision + recall),
                     torch.zeros_like(correct))
    return {"accuracy": float(correct.sum() / max(1, len(gold))),
            "macro_f1": float(f1.mean()), "f1": f1.tolist(),
            "confusion": confusion.tolist()}


def describe_metrics(m: dict) -> str:
    """One line: "loss 0.4014, accuracy 82.32%, macro-F1 82.31"."""
    return f"loss {m['loss']:.4f}, accuracy {100 * m['accuracy']:.2f}%, macro-F1 " \
           f"{100 * m['macro_f1']:.2f}"


# -- the task -----------------------------------------------------------------------------

class ClassifierTask:
    """The classification task for :class:`rnnkit.train.Trainer`."""

    name = TASK
    unit = "ex"
    world = SINGLE

    def __init__(self, model: SequenceClassifier, train, valid, cfg, seed: int, device):
        self.model, self.device = model, device
        self.train_ids, self.train_labels = train
        self.valid_ids, self.valid_labels = valid
        self.batches = ExampleBatches(len(self.train_ids), cfg.batch_size,
                                      lengths=[len(x) for x in self.train_ids], seed=seed,
                                      collate=self._collate)

    def _collate(self, indices):
        tokens, lengths = pad([self.train_ids[k] for k in indices])
        return tokens, lengths, torch.tensor([self.train_labels[k] for k in indices])

    def train_loss(self, batch):
        tokens, lengths, labels = batch
        logits = self.model(tokens.to(self.device), lengths)
        return F.cross_entropy(logits, labels.to(self.device)), len(labels)

    def evaluate(self, split: str) -> dict:
        share = self.world.share(self.valid_ids)       # each process scores its share
        probs = class_probabilities(self.model, share, self.device)
        return evaluation(torch.stack(self.world.gather(list(probs))), self.valid_labels)

    def describe(self, m: dict) -> str:
        return describe_metrics(m)


def evaluation(probs: torch.Tensor, gold: list[int]) -> dict:
    """Metrics of class probabilities (N, C) against gold ids; "objective" (what selects
    the model: lower is better) is the error rate, ties broken by the loss."""
    gold_t = torch.tensor(gold)
    loss = float(-probs.double().clamp(min=1e-300).log()[torch.arange(len(gold)), gold_t].mean())
    m = {"loss": loss, **classification_metrics(probs.argmax(1).tolist(), gold,
                                                probs.shape[1])}
    m["objective"] = error_objective(m)
    return m


@torch.no_grad()
def class_probabilities(model: SequenceClassifier, sequences: list[list[int]], device,
                        batch_size: int = 128) -> torch.Tensor:
    """Id lists -> class probabilities (N, C), float64 (so that the loss of a confident
    mistake stays finite), in input order."""
    model.eval()
    out = torch.empty(len(sequences), model.config.num_classes, dtype=torch.float64)
    for chunk in length_batches([len(s) for s in sequences], batch_size):
        tokens, lengths = pad([sequences[i] for i in chunk])
        out[chunk] = torch.softmax(model(tokens.to(device), lengths).double(), -1).cpu()
    return out


def _encode(tokenizer, examples, lowercase: bool, path) -> list[list[int]]:
    """Examples of file ``path`` -> token ids: words (split at whitespace) or byte-level BPE
    subwords; a line too long to read whole is refused (:func:`encode_bounded`)."""
    def encode(texts):
        if tokenizer.level == "bpe":
            return [ids[:-1] for ids in tokenizer.encode_lines(texts)]   # no line end
        return [tokenizer.encode_words(t.split()) for t in texts]

    return encode_bounded([_text(e.text, lowercase) for e in examples], encode,
                          lambda k: f"{path}, line {examples[k].line}", "a classifier")


def prepare(cfg: ClassifierDataConfig, options: dict, out: Path, *, resume: bool,
            log) -> recipe.Prepared:
    """The examples of a run, its vocabulary and labels (built from the training split, or
    loaded on resume), encoded."""
    train, valid, _ = labelled_splits(cfg, read_labelled)
    train_path, valid_path, _ = split_sources(cfg)
    if resume:
        tokenizer = load_tokenizer(out)
        labels = checkpoint.read_json(out / "labels.json")["labels"]
    else:
        tokenizer = build_tokenizer(cfg.level, [_text(e.text, cfg.lowercase) for e in train],
                                    min_count=cfg.min_count, max_size=cfg.max_vocab or None,
                                    bpe_vocab_size=cfg.bpe_vocab_size)
        labels = sorted_labels(e.label for e in train)
        if len(labels) < 2:
            raise ValueError(f"{train_path}: the training data has one label ({labels}); a "
                             f"classifier needs at least two")
    train_set = (_encode(tokenizer, train, cfg.lowercase, train_path), label_ids(train, labels, train_path))
    valid_set = (_encode(tokenizer, valid, cfg.lowercase, valid_path), label_ids(valid, labels, valid_path))
    return recipe.Prepared(
        sizes={"vocab_size": tokenizer.vocab_size, "num_classes": len(labels)},
        files={"": tokenizer, "labels.json": {"labels": labels}},
        config={"labels": labels, "lowercase": cfg.lowercase},
        report=f"{len(labels)} classes {labels}; vocabulary {tokenizer.vocab_size:,} words; "
               f"train {len(train):,} examples, valid {len(valid):,}",
        make_task=lambda model, seed, device: ClassifierTask(model, train_set, valid_set, cfg,
                                                             seed, device))


def describe_model(cfg: ClassifierConfig) -> str:
    return (f"{'bi' if cfg.bidirectional else ''}{cfg.cell} {cfg.num_layers}x"
            f"{cfg.hidden_size}, {cfg.pooling} pooling")


def train_classifier(data_cfg: ClassifierDataConfig | None, model_options: dict | None,
                     train_cfg: TrainConfig | dict | None, out: str | Path, **options) -> dict:
    """Train a sequence classifier into ``out``: see :func:`rnnkit.tasks.recipe.train` for
    the arguments; ``model_options`` are :class:`ClassifierConfig` fields other than
    ``vocab_size`` and ``num_classes``."""
    return recipe.train(SPEC, data_cfg, model_options, train_cfg, out, **options)


# -- using a trained model ----------------------------------------------------------------

def load_classifier(directory: str | Path, device: str | None = "cpu"):
    """(model in eval mode, tokenizer, config) of a classifier directory."""
    config = checkpoint.read_config(directory, TASK)
    tokenizer = load_tokenizer(directory)
    model = recipe.load_model(SPEC, directory, config, device,
                              {"vocab_size": tokenizer.vocab_size})
    return model, tokenizer, config


def evaluate_file(directory: str | Path, path: str | Path, *,
                  device: str | None = "cpu") -> dict:
    """Loss, accuracy, macro-F1, per-class F1 and confusion matrix on a labelled file."""
    model, tokenizer, config = load_classifier(directory, device)
    examples = read_labelled(path)
    gold = label_ids(examples, config["labels"], str(path))
    probs = class_probabilities(model, _encode(tokenizer, examples, config["lowercase"], path),
                                device_of(device))
    m = evaluation(probs, gold)
    del m["objective"]
    return {**m, "labels": config["labels"], "examples": len(examples), "file": str(path)}


def predict_file(directory: str | Path, path: str | Path, *,
                 device: str | None = "cpu") -> list[dict]:
    """Per line of ``path`` (text alone, or ``label<TAB>text`` whose label is checked and
    ignored): {"line", "label", "probabilities": {label: p}, "text"}."""
    model, tokenizer, config = load_classifier(directory, device)
    examples = read_labelled(path, require_label=False)
    given = [e for e in examples if e.label]
    label_ids(given, config["labels"], str(path))
    probs = class_probabilities(model, _encode(tokenizer, examples, config["lowercase"], path),
                                device_of(device))
    labels = config["labels"]
    return [{"line": e.line, "label": labels[int(p.argmax())],
             "probabilities": {label: float(q) for label, q in zip(labels, p)},
             "text": e.text} for e, p in zip(examples, probs)]


# -- the declaration ------------------------------------------------------------------------

def _evaluate(directory, path, *, device: str = "cpu", **_) -> dict:
    return evaluate_file(directory, path, device=device)


def evaluation_report(m: dict, path) -> list[str]:
    """``rnnkit eval``'s lines: the figures, then the confusion matrix and F1 per class."""
    width = max(len(str(x)) for x in m["labels"] + [n for row in m["confusion"]
                                                      for n in row]) + 2
    lines = [f"{path}: {describe_metrics(m)}; {m['examples']:,} examples",
             "confusion (rows: gold, columns: predicted); F1 per class",
             " " * width + "".join(f"{label:>{width}s}" for label in m["labels"])]
    for label, row, f1 in zip(m["labels"], m["confusion"], m["f1"]):
        lines.append(f"{label:>{width}s}" + "".join(f"{n:>{width}d}" for n in row)
                     + f"   F1 {100 * f1:.2f}")
    return lines


def prediction_text(directory, path, *, device: str = "cpu", json: bool = False,
                    **_) -> str:
    """``rnnkit predict``'s output: a TSV row (or a JSON object) per line of ``path``."""
    import json as json_module

    rows = predict_file(directory, path, device=device)
    if json:
        return json_module.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    labels = list(rows[0]["probabilities"]) if rows else []
    lines = ["line\tlabel\t" + "\t".join(f"p({label})" for label in labels) + "\ttext"]
    for r in rows:
        probs = "\t".join(f"{r['probabilities'][label]:.4f}" for label in labels)
        lines.append(f"{r['line']}\t{r['label']}\t{probs}\t{r['text']}")
    return "".join(line + "\n" for line in lines)


SPEC = recipe.TaskSpec(
    name=TASK, summary="a sequence classifier (many-to-one)",
    description="Train a classifier of 'label<TAB>text' lines: embedding, bidirectional "
    "recurrent stack, pooling, classes.",
    data_config=ClassifierDataConfig, model_config=ClassifierConfig, model=SequenceClassifier,
    prepare=prepare, describe_model=describe_model,
    train_defaults={"optimizer": "adam", "lr": 1e-3, "clip": 5.0, "lr_decay": 1.0,
                    "epochs": 10},
    evaluate=_evaluate, report=evaluation_report, predict=prediction_text,
    use="rnnkit predict",
    init_from=lambda model, prepared, directory, log: init_encoder(
        model.encoder, prepared.files[""], directory, log))

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
truncated. The labels are those of the training split: a validation, evaluation or prediction
label outside them is an error naming its file and line. The model kept is the one with the
best validation accuracy (ties: lower loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnkit import checkpoint
from rnnkit.config import check_fields
from rnnkit.data import build_tokenizer, load_tokenizer
from rnnkit.data.labelled import read_labelled
from rnnkit.data.stream import ExampleBatches
from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier
from rnnkit.tasks.common import (check_new_run, config_from_dict, device_of, error_objective,
                                 fit, labelled_splits, pad, read_run, save_run_files,
                                 split_sources)
from rnnkit.train import TrainConfig

TASK = "classifier"


@dataclass(frozen=True)
class ClassifierDataConfig:
    """Where the labelled lines come from and how they are batched.

    ``data``: a folder with train / dev (or valid) / test files, or one file whose last
    ``valid_fraction`` of examples is held out; or give ``train`` and ``valid`` files.
    """

    data: str = ""
    train: str = ""
    valid: str = ""
    valid_fraction: float = 0.1
    lowercase: bool = False
    level: str = "word"                 # "word" | "bpe" (byte-level BPE, HF tokenizers)
    min_count: int = 1                  # word level
    max_vocab: int = 0                  # word level
    bpe_vocab_size: int = 8000
    batch_size: int = 32

    def __post_init__(self):
        check_fields(self, [
            ("valid_fraction", lambda c: 0 < c.valid_fraction < 1, "a number in (0, 1)"),
            ("level", lambda c: c.level in ("word", "bpe"), "'word' or 'bpe'"),
            ("bpe_vocab_size", lambda c: c.bpe_vocab_size >= 259, "an int >= 259"),
            ("min_count", lambda c: c.min_count >= 1, "an int >= 1"),
            ("max_vocab", lambda c: c.max_vocab >= 0, "an int >= 0"),
            ("batch_size", lambda c: c.batch_size >= 1, "an int >= 1"),
        ])
        if not self.data and not (self.train and self.valid):
            raise ValueError("data: expected a folder or file of 'label<TAB>text' lines, or "
                             "both train and valid files")


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
        probs = class_probabilities(self.model, self.valid_ids, self.device)
        return evaluation(probs, self.valid_labels)

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
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))
    out = torch.empty(len(sequences), model.config.num_classes, dtype=torch.float64)
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        tokens, lengths = pad([sequences[i] for i in chunk])
        out[chunk] = torch.softmax(model(tokens.to(device), lengths).double(), -1).cpu()
    return out


def _encode(tokenizer, examples, lowercase: bool) -> list[list[int]]:
    """Examples -> token ids: words (split at whitespace) or byte-level BPE subwords."""
    texts = [_text(e.text, lowercase) for e in examples]
    if tokenizer.level == "bpe":
        return [ids[:-1] for ids in tokenizer.encode_lines(texts)]       # no line end
    return [tokenizer.encode_words(t.split()) for t in texts]


def train_classifier(data_cfg: ClassifierDataConfig | None, model_options: dict | None,
                     train_cfg: TrainConfig | None, out: str | Path, *, resume: bool = False,
                     train_overrides: dict | None = None, device: str | None = "cpu",
                     log=print) -> dict:
    """Train a sequence classifier into ``out`` (see :func:`rnnkit.tasks.lm.train_lm` for
    ``resume`` and ``train_overrides``); ``model_options`` are :class:`ClassifierConfig`
    fields other than ``vocab_size`` and ``num_classes``. Returns the loop's summary plus
    "valid" metrics of the best model."""
    out, dev = Path(out), device_of(device)
    if resume:
        data_cfg, model_options, train_cfg = read_run(out, TASK, ClassifierDataConfig,
                                                      train_overrides)
    else:
        check_new_run(out)
    train, valid, _ = labelled_splits(data_cfg, read_labelled)
    train_path, valid_path, _ = split_sources(data_cfg)
    if resume:
        tokenizer = load_tokenizer(out)
        labels = checkpoint.read_json(out / "labels.json")["labels"]
    else:
        tokenizer = build_tokenizer(data_cfg.level,
                                    [_text(e.text, data_cfg.lowercase) for e in train],
                                    min_count=data_cfg.min_count,
                                    max_size=data_cfg.max_vocab or None,
                                    bpe_vocab_size=data_cfg.bpe_vocab_size)
        labels = sorted_labels(e.label for e in train)
        if len(labels) < 2:
            raise ValueError(f"{train_path}: the training data has one label ({labels}); a "
                             f"classifier needs at least two")
    options = {k: v for k, v in model_options.items() if k not in ("vocab_size", "num_classes")}
    model_cfg = config_from_dict(ClassifierConfig, {"vocab_size": tokenizer.vocab_size,
                                                    "num_classes": len(labels), **options},
                                 "model options")
    train_set = (_encode(tokenizer, train, data_cfg.lowercase),
                 label_ids(train, labels, train_path))
    valid_set = (_encode(tokenizer, valid, data_cfg.lowercase),
                 label_ids(valid, labels, valid_path))
    if not resume:
        def write(directory):
            tokenizer.save(directory)
            checkpoint.write_json(directory / "labels.json", {"labels": labels})

        save_run_files(out, TASK, data_cfg, model_cfg.to_dict(), train_cfg, write)
    log(f"{len(labels)} classes {labels}; vocabulary {tokenizer.vocab_size:,} words; "
        f"train {len(train):,} examples, valid {len(valid):,}")
    torch.manual_seed(train_cfg.seed)
    model = SequenceClassifier(model_cfg).to(dev)
    log(f"model: {'bi' if model_cfg.bidirectional else ''}{model_cfg.cell} "
        f"{model_cfg.num_layers}x{model_cfg.hidden_size}, {model_cfg.pooling} pooling, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, on {dev}")
    task = ClassifierTask(model, train_set, valid_set, data_cfg, train_cfg.seed, dev)
    config = {"task": TASK, "model": model_cfg.to_dict(), "labels": labels,
              "lowercase": data_cfg.lowercase}
    return fit(task, train_cfg, out, config, resume=resume, log=log, describe=describe_metrics)


# -- using a trained model ----------------------------------------------------------------

def load_classifier(directory: str | Path, device: str | None = "cpu"):
    """(model in eval mode, tokenizer, config) of a classifier directory."""
    config = checkpoint.read_config(directory, TASK)
    tokenizer = load_tokenizer(directory)
    model_cfg = config_from_dict(ClassifierConfig, config.get("model", {}),
                                 str(Path(directory) / checkpoint.CONFIG))
    if model_cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{directory}: the model expects {model_cfg.vocab_size} words but "
                         f"the tokenizer has {tokenizer.vocab_size}")
    model = SequenceClassifier(model_cfg)
    checkpoint.load_weights(directory, model)
    return model.to(device_of(device)).eval(), tokenizer, config


def evaluate_file(directory: str | Path, path: str | Path, *,
                  device: str | None = "cpu") -> dict:
    """Loss, accuracy, macro-F1, per-class F1 and confusion matrix on a labelled file."""
    model, tokenizer, config = load_classifier(directory, device)
    examples = read_labelled(path)
    gold = label_ids(examples, config["labels"], str(path))
    probs = class_probabilities(model, _encode(tokenizer, examples, config["lowercase"]),
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
    probs = class_probabilities(model, _encode(tokenizer, examples, config["lowercase"]),
                                device_of(device))
    labels = config["labels"]
    return [{"line": e.line, "label": labels[int(p.argmax())],
             "probabilities": {label: float(q) for label, q in zip(labels, p)},
             "text": e.text} for e, p in zip(examples, probs)]

"""Conditioned generation (one-to-many): a language model of sentences given a condition.

The Python API behind ``rnnkit train conditioned-lm`` and ``rnnkit generate DIR
--condition …``::

    from rnnkit.tasks import conditioned_lm as clm
    clm.train_conditioned_lm(clm.ConditionedLMDataConfig(data="data/sst2"),
                             {"cell": "lstm", "hidden_size": 256, "condition_mode": "input"},
                             TrainConfig(optimizer="adam", lr=2e-3), out="runs/sst2-lm")
    clm.generate("runs/sst2-lm", "1", temperature=0.8, seed=3)    # a positive sentence

Training data is ``condition<TAB>text`` per line (see :mod:`rnnkit.data.labelled`): the
condition is a class label (``condition="label"``, e.g. the sentiment of SST-2) or a
comma-separated vector of numbers (``condition="vector"``). Each line is one sequence that
starts from the condition; its tokens and the closing line end are predicted (the same
conventions as :mod:`rnnkit.tasks.lm`). See :class:`rnnkit.models.lm.LanguageModel` for how
the condition enters the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnkit import checkpoint
from rnnkit.config import check_fields
from rnnkit.data import build_tokenizer, load_tokenizer
from rnnkit.data.labelled import read_labelled
from rnnkit.data.stream import ExampleBatches
from rnnkit.layers import length_mask
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.tasks.classifier import label_ids, sorted_labels
from rnnkit.tasks.common import (check_new_run, config_from_dict, device_of, fit,
                                 labelled_splits, pad, read_run, save_run_files,
                                 split_sources)
from rnnkit.train import TrainConfig

TASK = "conditioned_lm"


@dataclass(frozen=True)
class ConditionedLMDataConfig:
    """Where the ``condition<TAB>text`` lines come from and how they are batched.

    ``data``: a folder with train / dev (or valid) / test files, or one file whose last
    ``valid_fraction`` of lines is held out; or give ``train`` and ``valid`` files.
    """

    data: str = ""
    train: str = ""
    valid: str = ""
    valid_fraction: float = 0.1
    condition: str = "label"            # "label" | "vector"
    level: str = "word"                 # "word" | "char"
    min_count: int = 1
    batch_size: int = 32

    def __post_init__(self):
        check_fields(self, [
            ("valid_fraction", lambda c: 0 < c.valid_fraction < 1, "a number in (0, 1)"),
            ("condition", lambda c: c.condition in ("label", "vector"), "'label' or 'vector'"),
            ("level", lambda c: c.level in ("word", "char"), "'word' or 'char'"),
            ("min_count", lambda c: c.min_count >= 1, "an int >= 1"),
            ("batch_size", lambda c: c.batch_size >= 1, "an int >= 1"),
        ])
        if not self.data and not (self.train and self.valid):
            raise ValueError("data: expected a folder or file of 'condition<TAB>text' lines, "
                             "or both train and valid files")


def _conditions(examples, cfg, labels, path: str):
    if cfg.condition == "label":
        return torch.tensor(label_ids(examples, labels, path))
    return torch.tensor([e.label for e in examples], dtype=torch.float32)


def sentence_batch(lines: list[list[int]], line_end_id: int):
    """Encoded lines (each ending with the line end) -> inputs (T, B) = line end, w_1 …
    w_{n-1}; targets (T, B) = w_1 … w_n; lengths (B,)."""
    targets, lengths = pad(lines)
    inputs, _ = pad([[line_end_id] + line[:-1] for line in lines])
    return inputs, targets, lengths


class ConditionedLMTask:
    """The conditioned language-model task for :class:`rnnkit.train.Trainer`."""

    name = TASK
    unit = "tok"

    def __init__(self, model: LanguageModel, line_end_id: int, train, valid, cfg, seed: int,
                 device):
        self.model, self.line_end_id, self.device = model, line_end_id, device
        self.train_lines, self.train_cond = train
        self.valid_lines, self.valid_cond = valid
        self.batches = ExampleBatches(len(self.train_lines), cfg.batch_size,
                                      lengths=[len(x) for x in self.train_lines], seed=seed,
                                      collate=self._collate)

    def _collate(self, indices):
        return (*sentence_batch([self.train_lines[k] for k in indices], self.line_end_id),
                self.train_cond[indices])

    def train_loss(self, batch):
        total, count = conditioned_nll(self.model, batch, self.device)
        return total / count, count

    def evaluate(self, split: str) -> dict:
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for k in range(0, len(self.valid_lines), 64):
                batch = (*sentence_batch(self.valid_lines[k:k + 64], self.line_end_id),
                         self.valid_cond[k:k + 64])
                t, n = conditioned_nll(self.model, batch, self.device)
                total += float(t)
                count += n
        return {"loss": total / count, "ppl": math.exp(total / count)}

    def describe(self, m: dict) -> str:
        return f"loss {m['loss']:.4f}, ppl {m['ppl']:.2f}"


def conditioned_nll(model: LanguageModel, batch, device):
    """Summed NLL (nats, a tensor) of a batch's real target tokens, and their count."""
    inputs, targets, lengths, condition = batch
    state = model.initial_state(inputs.shape[1], condition=condition.to(device))
    hidden, _ = model(inputs.to(device), state, lengths=lengths)
    nll = model.nll(hidden, targets.to(device))
    mask = length_mask(lengths, targets.shape[0], device)
    return nll[mask].sum(), int(lengths.sum())


def train_conditioned_lm(data_cfg: ConditionedLMDataConfig | None, model_options: dict | None,
                         train_cfg: TrainConfig | None, out: str | Path, *,
                         resume: bool = False, train_overrides: dict | None = None,
                         device: str | None = "cpu", log=print) -> dict:
    """Train a conditioned language model into ``out`` (see
    :func:`rnnkit.tasks.lm.train_lm` for ``resume`` and ``train_overrides``);
    ``model_options`` are :class:`LMConfig` fields (``condition_mode``, ``cell``, …) other
    than the vocabulary and condition sizes; ``condition_mode`` defaults to "input" here
    (it steers the sentences far more than "init": see the README)."""
    out, dev = Path(out), device_of(device)
    if resume:
        data_cfg, model_options, train_cfg = read_run(out, TASK, ConditionedLMDataConfig,
                                                      train_overrides)
    else:
        check_new_run(out, ("tokenizer.json",))
    vector = data_cfg.condition == "vector"
    train, valid, _ = labelled_splits(data_cfg, lambda p: read_labelled(p, vector=vector))
    train_path, valid_path, _ = split_sources(data_cfg)
    if resume:
        tokenizer = load_tokenizer(out)
        labels = checkpoint.read_json(out / "labels.json")["labels"]
    else:
        tokenizer = build_tokenizer(data_cfg.level, [e.text for e in train],
                                    min_count=data_cfg.min_count)
        labels = [] if vector else sorted_labels(e.label for e in train)
    options = {"condition_mode": "input",
               **{k: v for k, v in model_options.items()
                  if k not in ("vocab_size", "condition", "num_conditions")}}
    if vector:
        options["condition_size"] = size = len(train[0].label)
        for e in valid:
            if len(e.label) != size:
                raise ValueError(f"{valid_path}, line {e.line}: a vector of {len(e.label)} "
                                 f"numbers, expected {size} as in the training data")
    model_cfg = config_from_dict(LMConfig, {
        "vocab_size": tokenizer.vocab_size, "condition": data_cfg.condition,
        "num_conditions": len(labels), **options}, "model options")
    train_set = ([tokenizer.encode_line(e.text) for e in train],
                 _conditions(train, data_cfg, labels, train_path))
    valid_set = ([tokenizer.encode_line(e.text) for e in valid],
                 _conditions(valid, data_cfg, labels, valid_path))
    if not resume:
        def write(directory):
            tokenizer.save(directory)
            checkpoint.write_json(directory / "labels.json", {"labels": labels})

        save_run_files(out, TASK, data_cfg, model_cfg.to_dict(), train_cfg, write)
    what = f"labels {labels}" if labels else f"vectors of {model_cfg.condition_size}"
    log(f"conditioned on {what}; {tokenizer.level} vocabulary {tokenizer.vocab_size:,}; "
        f"train {len(train):,} lines, valid {len(valid):,}")
    torch.manual_seed(train_cfg.seed)
    model = LanguageModel(model_cfg, counts=tokenizer.counts).to(dev)
    log(f"model: {model_cfg.cell} {model_cfg.num_layers}x{model_cfg.hidden_size}, condition "
        f"via the {'initial state' if model_cfg.condition_mode == 'init' else 'input'}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, on {dev}")
    task = ConditionedLMTask(model, tokenizer.line_end_id, train_set, valid_set, data_cfg,
                             train_cfg.seed, dev)
    config = {"task": TASK, "model": model_cfg.to_dict(), "labels": labels,
              "level": tokenizer.level}
    return fit(task, train_cfg, out, config, resume=resume, log=log,
               describe=task.describe)


def load_conditioned_lm(directory: str | Path, device: str | None = "cpu"):
    """(model in eval mode, tokenizer, config) of a conditioned language-model directory."""
    config = checkpoint.read_config(directory, TASK)
    tokenizer = load_tokenizer(directory)
    model_cfg = config_from_dict(LMConfig, config.get("model", {}),
                                 str(Path(directory) / checkpoint.CONFIG))
    model = LanguageModel(model_cfg, counts=tokenizer.counts)
    checkpoint.load_weights(directory, model)
    return model.to(device_of(device)).eval(), tokenizer, config


def parse_condition(text: str, config: dict):
    """A condition as given on the command line -> a label id or a vector tensor."""
    labels = config.get("labels") or []
    if config["model"]["condition"] == "label":
        if text not in labels:
            raise ValueError(f"condition: unknown label {text!r}; the model knows {labels}")
        return labels.index(text)
    try:
        vector = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"condition: expected a comma-separated list of numbers, got "
                         f"{text!r}") from None
    if not all(math.isfinite(v) for v in vector):
        raise ValueError(f"condition: {text!r} holds a non-finite number")
    size = config["model"]["condition_size"]
    if len(vector) != size:
        raise ValueError(f"condition: expected {size} numbers, got {len(vector)}")
    return torch.tensor(vector)


def generate(directory: str | Path, condition: str, prime: str = "", *,
             max_tokens: int = 60, stop=("\n",), on_text=None, beam: int = 0,
             device: str | None = "cpu", **sampling) -> str:
    """A sentence for ``condition`` (a label, or numbers "0.1,2,…"), continuing ``prime``;
    stops at the end of the line by default. ``sampling`` and ``beam`` as in
    :func:`rnnkit.tasks.lm.generate`."""
    from rnnkit.tasks.lm import generate_from

    model, tokenizer, config = load_conditioned_lm(directory, device)
    conditioned = model.conditioned_on(parse_condition(condition, config))
    return generate_from(conditioned, tokenizer, prime, max_tokens=max_tokens, stop=stop,
                         on_text=on_text, beam=beam, **sampling)

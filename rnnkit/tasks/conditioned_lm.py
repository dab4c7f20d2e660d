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
from rnnkit.config import option
from rnnkit.data import build_tokenizer, load_tokenizer
from rnnkit.data.labelled import read_labelled
from rnnkit.data.stream import ExampleBatches
from rnnkit.layers import length_mask
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.tasks import lm, recipe
from rnnkit.tasks.classifier import label_ids, sorted_labels
from rnnkit.tasks.common import SplitSource, labelled_splits, pad, split_sources
from rnnkit.train import TrainConfig
from rnnkit.train.metrics import perplexity
from rnnkit.train.distributed import SINGLE

TASK = "conditioned_lm"


@dataclass(frozen=True)
class ConditionedLMDataConfig(SplitSource):
    """Where the ``condition<TAB>text`` lines come from (see
    :class:`rnnkit.tasks.common.SplitSource`) and how they are batched."""

    condition: str = option("label", "what the first column of each line is",
                            choices=("label", "vector"))
    level: str = option("word", "what a token is", choices=("word", "char"))
    min_count: int = option(1, "rarer tokens become <unk>")
    batch_size: int = option(32, "lines per batch")

    def __post_init__(self):
        self.check_source([
            ("condition", lambda c: c.condition in ("label", "vector"), "'label' or 'vector'"),
            ("level", lambda c: c.level in ("word", "char"), "'word' or 'char'"),
            ("min_count", lambda c: c.min_count >= 1, "an int >= 1"),
            ("batch_size", lambda c: c.batch_size >= 1, "an int >= 1"),
        ], "'condition<TAB>text' lines")


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
    world = SINGLE

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
        lines, conditions = (self.world.share(x) for x in (self.valid_lines, self.valid_cond))
        with torch.no_grad():                        # each process scores its share
            for k in range(0, len(lines), 64):
                batch = (*sentence_batch(lines[k:k + 64], self.line_end_id),
                         conditions[k:k + 64])
                t, n = conditioned_nll(self.model, batch, self.device)
                total += float(t)
                count += n
        total, count = self.world.sum(total, count)
        return {"loss": total / count, "ppl": perplexity(total / count)}

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


def prepare(cfg: ConditionedLMDataConfig, options: dict, out: Path, *, resume: bool,
            log) -> recipe.Prepared:
    """The lines of a run, its vocabulary and labels (built from the training split, or
    loaded on resume), encoded with their conditions."""
    vector = cfg.condition == "vector"
    train, valid, _ = labelled_splits(cfg, lambda p: read_labelled(p, vector=vector))
    train_path, valid_path, _ = split_sources(cfg)
    if resume:
        tokenizer = load_tokenizer(out)
        labels = checkpoint.read_json(out / "labels.json")["labels"]
    else:
        tokenizer = build_tokenizer(cfg.level, [e.text for e in train], min_count=cfg.min_count)
        labels = [] if vector else sorted_labels(e.label for e in train)
    sizes = {"vocab_size": tokenizer.vocab_size, "condition": cfg.condition,
             "num_conditions": len(labels)}
    if vector:
        sizes["condition_size"] = size = len(train[0].label)
        for e in valid:
            if len(e.label) != size:
                raise ValueError(f"{valid_path}, line {e.line}: a vector of {len(e.label)} "
                                 f"numbers, expected {size} as in the training data")
    train_set = ([tokenizer.encode_line(e.text) for e in train],
                 _conditions(train, cfg, labels, train_path))
    valid_set = ([tokenizer.encode_line(e.text) for e in valid],
                 _conditions(valid, cfg, labels, valid_path))
    what = f"labels {labels}" if labels else f"vectors of {sizes['condition_size']}"
    return recipe.Prepared(
        sizes=sizes, files={"": tokenizer, "labels.json": {"labels": labels}},
        config={"labels": labels, "level": tokenizer.level},
        report=f"conditioned on {what}; {tokenizer.level} vocabulary "
               f"{tokenizer.vocab_size:,}; train {len(train):,} lines, valid {len(valid):,}",
        make_task=lambda model, seed, device: ConditionedLMTask(
            model, tokenizer.line_end_id, train_set, valid_set, cfg, seed, device),
        model_kwargs={"counts": tokenizer.counts})


def describe_model(cfg: LMConfig) -> str:
    via = "initial state" if cfg.condition_mode == "init" else "input"
    return f"{lm.describe_model(cfg)}, condition via the {via}"


def train_conditioned_lm(data_cfg: ConditionedLMDataConfig | None, model_options: dict | None,
                         train_cfg: TrainConfig | dict | None, out: str | Path, **options) -> dict:
    """Train a conditioned language model into ``out``: see
    :func:`rnnkit.tasks.recipe.train` for the arguments; ``model_options`` are
    :class:`LMConfig` fields (``condition_mode``, ``cell``, …) other than the vocabulary and
    condition sizes; ``condition_mode`` defaults to "input" here (it steers the sentences far
    more than "init": see the README)."""
    return recipe.train(SPEC, data_cfg, model_options, train_cfg, out, **options)


def load_conditioned_lm(directory: str | Path, device: str | None = "cpu"):
    """(model in eval mode, tokenizer, config) of a conditioned language-model directory."""
    config = checkpoint.read_config(directory, TASK)
    tokenizer = load_tokenizer(directory)
    model = recipe.load_model(SPEC, directory, config, device,
                              {"vocab_size": tokenizer.vocab_size}, counts=tokenizer.counts)
    return model, tokenizer, config


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
             device: str | None = "cpu", int8: bool = False, log=None, **sampling) -> str:
    """A sentence for ``condition`` (a label, or numbers "0.1,2,…"), continuing ``prime``;
    stops at the end of the line by default. ``sampling``, ``beam`` and ``int8`` as in
    :func:`rnnkit.tasks.lm.generate`."""
    from rnnkit.tasks.lm import generate_from

    model, tokenizer, config = load_conditioned_lm(directory, device)
    if int8:
        from rnnkit.quantize import quantize_lm

        model, described = quantize_lm(model)
        if log is not None:
            log(described)
    conditioned = model.conditioned_on(parse_condition(condition, config))
    return generate_from(conditioned, tokenizer, prime, max_tokens=max_tokens, stop=stop,
                         on_text=on_text, beam=beam, **sampling)


SPEC = recipe.TaskSpec(
    name=TASK, summary="a language model conditioned on a label or vector (one-to-many)",
    description="Train a sentence model of 'condition<TAB>text' lines; then 'rnnkit "
    "generate DIR --condition LABEL'.",
    data_config=ConditionedLMDataConfig, model_config=LMConfig, model=LanguageModel,
    prepare=prepare, describe_model=describe_model,
    model_defaults={"hidden_size": 256, "num_layers": 1, "dropout": 0.3,
                    "condition_mode": "input"},
    train_defaults={"optimizer": "adam", "lr": 2e-3, "clip": 1.0, "lr_decay": 2.0,
                    "epochs": 10},
    use="rnnkit generate --condition")

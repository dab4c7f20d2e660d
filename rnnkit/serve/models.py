"""The models a server holds: each trained directory loaded once, with what the API says
about it.

``rnnkit serve DIR …`` loads every directory at start through its task's own loader
(:func:`rnnkit.tasks.lm.load_lm`, :func:`~rnnkit.tasks.classifier.load_classifier`, …), so
the safetensors-only, size-checked loading of the library applies unchanged. A model is
named after its directory (``NAME=DIR`` names it explicitly).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

#: What each task's models answer: the endpoints (besides /health and /models).
ENDPOINTS = {
    "lm": ("score", "generate", "activations"),
    "conditioned_lm": ("generate",),
    "classifier": ("classify",),
    "tagger": ("tag",),
    "translator": ("translate",),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class ServedModel:
    """One loaded model: its ``name``, ``task`` and ``directory``; ``model`` in eval mode;
    its tokenizers (``tokenizer`` for the language models and the classifier; ``words`` and
    ``chars`` for the tagger; ``source`` and ``target`` for the translator); ``config`` (the
    directory's config.json). A language model's activation view reads a private copy of
    the model (made on first use under ``lock``), one request at a time
    (``activation_lock``)."""

    name: str
    task: str
    directory: str
    model: object
    config: dict
    tokenizers: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    activation_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    activation_model: object = field(default=None, repr=False)
    kinds: list | None = field(default=None, repr=False)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints this model answers."""
        return ENDPOINTS[self.task]

    def describe(self) -> dict:
        """What ``/models`` says about it: name, task, cell, sizes, endpoints and the
        task's own facts (labels, tags, languages, level)."""
        m = self.model.config
        sizes = {k: getattr(m, k) for k in (
            "vocab_size", "embedding_size", "hidden_size", "num_layers", "num_classes",
            "num_tags", "source_vocab_size", "target_vocab_size", "encoder_layers",
            "decoder_layers", "char_hidden_size", "num_conditions", "condition_size")
            if isinstance(getattr(m, k, None), int)}
        sizes["parameters"] = sum(p.numel() for p in self.model.parameters())
        out = {"name": self.name, "task": self.task, "cell": m.cell, "sizes": sizes,
               "endpoints": list(self.endpoints)}          # no paths: clients need none
        for key in ("level", "labels", "tags", "languages"):
            if key in self.config:
                out[key] = self.config[key]
        if self.task == "conditioned_lm":
            out["condition"] = self.config["model"]["condition"]
        if self.task == "lm":
            out["level"] = self.tokenizers["tokenizer"].level
            out["activation_kinds"] = self.activation_kinds
        return out

    @property
    def activation_kinds(self) -> list[str]:
        """The kinds of :func:`rnnkit.diagnostics.activations.activations` this language
        model's cell has ("hidden", "cell", gate names), found once by reading one token."""
        if self.kinds is None:
            from rnnkit.serve.inference import available_kinds

            self.kinds = available_kinds(self)
        return self.kinds


def _load(directory: str):
    """(task, model, tokenizers, config) of a model directory, by its task's loader."""
    from rnnkit.checkpoint import read_config
    from rnnkit.tasks import classifier, conditioned_lm, lm, tagger, translator

    task = read_config(directory).get("task")
    if task == "lm":
        model, tok, config = lm.load_lm(directory)
        return task, model, {"tokenizer": tok}, config
    if task == "conditioned_lm":
        model, tok, config = conditioned_lm.load_conditioned_lm(directory)
        return task, model, {"tokenizer": tok}, config
    if task == "classifier":
        model, tok, config = classifier.load_classifier(directory)
        return task, model, {"tokenizer": tok}, config
    if task == "tagger":
        model, words, chars, config = tagger.load_tagger(directory)
        return task, model, {"words": words, "chars": chars}, config
    if task == "translator":
        model, source, target, config = translator.load_translator(directory)
        return task, model, {"source": source, "target": target}, config
    raise ValueError(f"{directory}: holds a {task!r} model; rnnkit serve serves "
                     f"{', '.join(ENDPOINTS)} models")


def split_name(argument: str) -> tuple[str, str]:
    """``"NAME=DIR"`` -> (NAME, DIR); a plain ``"DIR"`` -> (its folder name, DIR)."""
    name, sep, directory = argument.partition("=")
    if sep and _NAME.match(name) and not os.path.exists(argument):
        return name, directory
    directory = argument
    name = Path(os.path.abspath(directory)).name
    return name, directory


def load_models(arguments: list[str]) -> dict[str, ServedModel]:
    """Load every ``DIR`` or ``NAME=DIR`` once (CPU, eval mode); name -> model.

    Raises ``ValueError`` naming the directory for one that is not a model of a served
    task, and for two models of one name.
    """
    if not arguments:
        raise ValueError("DIR: expected at least one model directory")
    models: dict[str, ServedModel] = {}
    for argument in arguments:
        name, directory = split_name(argument)
        if not _NAME.match(name):
            raise ValueError(f"{argument}: the model name {name!r} is not usable in a "
                             f"request; name it with NAME=DIR (letters, digits, . _ -)")
        if name in models:
            raise ValueError(f"{argument}: a second model named {name!r} (also "
                             f"{models[name].directory}); name them with NAME=DIR")
        task, model, tokenizers, config = _load(directory)
        models[name] = ServedModel(name, task, str(directory), model, config, tokenizers)
    return models


__all__ = ["ENDPOINTS", "ServedModel", "load_models", "split_name"]

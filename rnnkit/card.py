"""The model card: a Hugging Face-style ``README.md`` in a model directory.

A model directory is already the Hub's layout — ``config.json``, ``model.safetensors``, the
tokenizer file(s) — and :func:`write_card` adds the card: YAML front matter
(``library_name: rnnkit``, tags, pipeline tag, datasets, and a ``model-index`` of the
validation figures of the model kept) and a body with the architecture, the figures, the
training command and how to use the model. A training run writes it when it ends;
``rnnkit card DIR`` writes it for a directory made before cards existed. Nothing reads the
card back: rnnkit loads the directory as ever.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rnnkit import checkpoint
from rnnkit.files import write_text

CARD = "README.md"
RESUMES_SHOWN = 5       # a run's last resumes the card lists (run.json keeps them all)

#: Per task: the Hub's pipeline tag, a task tag, and the figures the card reports (each a
#: metrics.jsonl key, its card name, and whether it is a percentage).
TASK_CARDS = {
    "lm": ("text-generation", "language-model",
           (("ppl", "perplexity", False), ("loss", "loss", False))),
    "conditioned_lm": ("text-generation", "conditioned-generation",
                       (("ppl", "perplexity", False), ("loss", "loss", False))),
    "classifier": ("text-classification", "text-classification",
                   (("accuracy", "accuracy", True), ("macro_f1", "macro-F1", True),
                    ("loss", "loss", False))),
    "tagger": ("token-classification", "part-of-speech-tagging",
               (("accuracy", "accuracy", True), ("loss", "loss", False))),
    "translator": ("translation", "translation",
                   (("bleu", "BLEU", False), ("chrf", "chrF", False),
                    ("ppl", "perplexity", False), ("loss", "loss", False))),
    "recognizer": ("automatic-speech-recognition", "speech-recognition",
                   (("wer", "WER", True), ("cer", "CER", True), ("loss", "CTC loss", False))),
    "captioner": ("image-to-text", "image-captioning",
                  (("bleu", "BLEU", False), ("ppl", "perplexity", False),
                   ("loss", "loss", False))),
}
WHAT = {"lm": "language model", "conditioned_lm": "conditioned language model",
        "classifier": "text classifier", "tagger": "sequence tagger",
        "translator": "translator (encoder-decoder with attention)",
        "recognizer": "speech recogniser (CTC over characters or BPE units, recurrent stack "
                      "with time subsampling)",
        "captioner": "image captioner (CNN or precomputed features, attentional decoder)"}
USE = {"lm": "rnnkit generate {dir} --prime \"...\"", "conditioned_lm":
       "rnnkit generate {dir} --condition LABEL", "classifier": "rnnkit predict {dir} FILE",
       "tagger": "rnnkit predict {dir} FILE", "translator": "rnnkit translate {dir} FILE",
       "recognizer": "rnnkit transcribe {dir} FILE.wav",
       "captioner": "rnnkit caption {dir} IMAGE..."}


def best_validation(directory: Path) -> dict | None:
    """The validation figures of the model kept: the ``metrics.jsonl`` line of split
    "valid" with the lowest ``objective`` (else loss); None without one."""
    path = directory / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(raw)
        except ValueError:
            continue                                   # a line cut by a crash
        if isinstance(row, dict) and row.get("split") == "valid":
            lines.append(row)

    def rank(row):
        value = row.get("objective", row.get("loss"))
        return value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    return min(lines, key=rank) if lines else None


def _yaml(value) -> str:
    """A scalar as YAML: numbers as they are, strings as JSON strings (valid YAML)."""
    return str(value) if isinstance(value, (int, float)) else json.dumps(value)


def _datasets(run: dict) -> list[str]:
    data = run.get("data", {})
    paths = [data.get(k) for k in ("data", "train") if isinstance(data.get(k), str)]
    names = []
    for p in paths:
        if p:
            name = Path(p.split(",")[0]).name
            names.append(Path(name).stem if "." in name and not Path(p).is_dir() else name)
    return list(dict.fromkeys(n for n in names if n))


def card_text(directory: str | Path, command: str | None = None) -> str:
    """The card of a model directory (see the module docstring)."""
    directory = Path(directory)
    config = checkpoint.read_config(directory)
    task = config.get("task", "")
    if task not in TASK_CARDS:
        raise ValueError(f"{directory / checkpoint.CONFIG}: task {task!r} has no model card "
                         f"(known: {', '.join(TASK_CARDS)})")
    run = checkpoint.read_json(directory / "run.json") if (directory / "run.json").is_file() \
        else {}
    command = command or run.get("command")
    pipeline, task_tag, figures = TASK_CARDS[task]
    model = config.get("model", {})
    cell = model.get("cell", "")
    valid = best_validation(directory) or {}
    reported = [(key, name, percent, valid[key]) for key, name, percent in figures
                if isinstance(valid.get(key), (int, float)) and math.isfinite(valid[key])]
    datasets = _datasets(run or config)
    name = directory.resolve().name
    front = ["---", "library_name: rnnkit", f"pipeline_tag: {pipeline}", "tags:",
             "- rnnkit", "- recurrent-neural-network", f"- {task_tag}"]
    front += [f"- {cell}"] if cell.replace("_", "").isalnum() else []
    if datasets:
        front += ["datasets:"] + [f"- {_yaml(d)}" for d in datasets]
    if reported:
        front += ["model-index:", f"- name: {_yaml(name)}", "  results:",
                  f"  - task: {{type: {pipeline}}}",
                  f"    dataset: {{name: {_yaml(datasets[0] if datasets else 'unknown')}, "
                  f"type: {_yaml(datasets[0] if datasets else 'unknown')}, split: validation}}",
                  "    metrics:"]
        front += [f"    - {{type: {_yaml(card_name)}, value: {value:.6g}, "
                  f"name: {_yaml('validation ' + card_name)}}}"
                  for _, card_name, _, value in reported]
    front.append("---")
    sizes = ", ".join(f"{k} {v}" for k, v in model.items()
                      if k in ("hidden_size", "num_layers", "embedding_size", "vocab_size",
                               "num_classes", "num_tags", "source_vocab_size",
                               "target_vocab_size") and v)
    body = [f"# {name}", "",
            f"A recurrent {WHAT[task]} ({cell} cell; {sizes}) trained "
            f"with [rnnkit](https://pypi.org/project/rnnkit/) {config.get('rnnkit', '')}.", ""]
    if reported:
        body += [f"## Validation (step {valid.get('step', '?')}, the model kept)", "",
                 "| figure | value |", "| --- | --- |"]
        body += [f"| {card_name} | {100 * value:.2f}% |" if percent else
                 f"| {card_name} | {value:.4f} |" for _, card_name, percent, value in reported]
        body.append("")
    body += ["## Training", ""]
    body += ["```", command, "```"] if command else ["(command not recorded: see run.json)"]
    resumed = [c for c in run.get("resumed", []) if isinstance(c, str)]
    if resumed:
        earlier = len(resumed) - RESUMES_SHOWN
        body += ["", "then resumed with" + (f" (the last {RESUMES_SHOWN} of {len(resumed)})"
                                            if earlier > 0 else ""),
                 "", "```", *resumed[-RESUMES_SHOWN:], "```"]
    body += ["", "## Use", "", "```", USE[task].format(dir=name), "```", "",
             "Files: `config.json` (architecture), `model.safetensors` (weights), the "
             "tokenizer file(s), `run.json` (the run's settings), `metrics.jsonl`.", ""]
    return "\n".join(front + [""] + body)


def write_card(directory: str | Path, command: str | None = None) -> Path:
    """Write ``directory/README.md`` (atomically) and return its path."""
    path = Path(directory) / CARD
    write_text(path, card_text(directory, command))
    return path

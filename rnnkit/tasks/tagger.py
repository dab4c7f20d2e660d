"""Sequence tagging (many-to-many aligned), end to end: train, evaluate, predict.

The Python API behind ``rnnkit train tagger``, ``rnnkit eval`` and ``rnnkit predict``::

    from rnnkit.tasks import tagger
    tagger.train_tagger(tagger.TaggerDataConfig(data="data/ud-en-ewt", column="upos"),
                        {"char_hidden_size": 64}, TrainConfig(optimizer="adam", lr=2e-3),
                        out="runs/pos")
    tagger.evaluate_file("runs/pos", "en_ewt-ud-test.conllu")   # accuracy, unseen-word accuracy
    tagger.predict_file("runs/pos", "new.conllu", "new.tagged.conllu")

Files are CoNLL-U (tags from the UPOS or XPOS column) or ``word<TAB>tag`` columns, a blank
line between sentences (see :mod:`rnnkit.data.labelled`). The word vocabulary is every
word form of the training split; a word "unseen in training" is one outside it. The
character vocabulary is every character of the training words. The tag set is every tag of
the training and validation splits (a rare tag seen only in validation does not stop
training, though the model cannot learn it); a tag outside it in a file given to ``eval`` is
an error naming the file and line. Sentences are never truncated; one of more than
``rnnkit.config.MAX_INPUT_TOKENS`` words, or with a word of more than ``MAX_WORD_CHARS``
characters, is refused naming its file and line. The model kept is the one with the best
validation accuracy (ties: lower loss).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnkit import checkpoint
from rnnkit.config import MAX_INPUT_TOKENS, MAX_WORD_CHARS, option
from rnnkit.data import load_tokenizer
from rnnkit.data.labelled import TAG_COLUMNS, format_tagged, read_tagged, write_tagged
from rnnkit.data.stream import ExampleBatches
from rnnkit.data.tokenizers import CharTokenizer, build_char_tokenizer, word_tokenizer_from_counts
from rnnkit.models.encoder import UNK_ID
from rnnkit.models.tagger import Tagger, TaggerConfig
from rnnkit.tasks import recipe
from rnnkit.tasks.pretrained import init_encoder
from rnnkit.tasks.common import (SplitSource, device_of, error_objective, labelled_splits,
                                 length_batches, pad, split_sources)
from rnnkit.train import TrainConfig
from rnnkit.train.distributed import SINGLE, World

TASK = "tagger"
IGNORE = -100


@dataclass(frozen=True)
class TaggerDataConfig(SplitSource):
    """Where the tagged sentences come from (see :class:`rnnkit.tasks.common.SplitSource`)
    and how they are batched."""

    column: str = option("upos", "CoNLL-U tag column", choices=TAG_COLUMNS)
    batch_size: int = option(32, "sentences per batch")

    def __post_init__(self):
        self.check_source([
            ("column", lambda c: c.column in TAG_COLUMNS, f"one of {list(TAG_COLUMNS)}"),
            ("batch_size", lambda c: c.batch_size >= 1, "an int >= 1"),
        ], "tagged sentences")


@dataclass
class Encoded:
    """Sentences as ids: words, tags (None when untagged) and the word strings."""

    words: list[list[int]]
    tags: list[list[int]] | None
    forms: list[list[str]]

    def share(self, world: World) -> "Encoded":
        """This process's share of the sentences (see :meth:`World.share`)."""
        return Encoded(world.share(self.words),
                       None if self.tags is None else world.share(self.tags),
                       world.share(self.forms))


def encode_sentences(sentences, word_tok, tags: list[str] | None, path: str) -> Encoded:
    """Tagged sentences -> ids; a tag the model does not know is an error naming the line, as
    is a sentence of more than MAX_INPUT_TOKENS words or a word of more than MAX_WORD_CHARS
    characters (a tagger reads a sentence whole)."""
    index = None if tags is None else {t: k for k, t in enumerate(tags)}
    words, tag_ids = [], []
    for s in sentences:
        _check_bounds(s, path)
        words.append(word_tok.encode_words(s.words))
        if index is not None:
            row = []
            for k, tag in enumerate(s.tags):
                if tag not in index:
                    line = s.line + s.word_lines[k]
                    raise ValueError(f"{path}, line {line}: unknown tag {tag!r}; the model "
                                     f"knows {len(tags)} tags: {' '.join(tags)}")
                row.append(index[tag])
            tag_ids.append(row)
    return Encoded(words, tag_ids if index is not None else None, [s.words for s in sentences])


def _check_bounds(s, path: str) -> None:
    if len(s.words) > MAX_INPUT_TOKENS:
        raise ValueError(f"{path}, line {s.line}: a sentence of {len(s.words):,} words; a "
                         f"tagger reads a sentence whole, at most {MAX_INPUT_TOKENS:,} words: "
                         f"split it")
    for k, word in enumerate(s.words):
        if len(word) > MAX_WORD_CHARS:
            raise ValueError(f"{path}, line {s.line + s.word_lines[k]}: a word of "
                             f"{len(word):,} characters; a tagger reads words of at most "
                             f"{MAX_WORD_CHARS:,} characters")


def collate(batch_words, batch_tags, batch_forms, char_tok: CharTokenizer | None):
    """Sentences -> (words (T, B), lengths (B,), tags (T, B) with -100 padding or None,
    chars (Lc, N), char lengths (N,), word_index (T, B)) — the N distinct word forms of the
    batch, each encoded once."""
    words, lengths = pad(batch_words)
    tags = None
    if batch_tags is not None:
        tags, _ = pad(batch_tags, IGNORE)
    if char_tok is None:
        return words, lengths, tags, None, None, None
    forms: dict[str, int] = {}
    word_index = torch.zeros(words.shape, dtype=torch.long)
    for b, sentence in enumerate(batch_forms):
        for t, form in enumerate(sentence):
            word_index[t, b] = forms.setdefault(form, len(forms))
    chars, char_lengths = pad([char_tok.encode(f, unknown_policy="unk") for f in forms])
    return words, lengths, tags, chars, char_lengths, word_index


def tag_metrics(predicted: list[list[int]], gold: list[list[int]],
                unseen: list[list[bool]]) -> dict:
    """Token accuracy, accuracy on words unseen in training (and their count), sentence
    accuracy (every tag right)."""
    total = correct = n_unseen = correct_unseen = whole = 0
    for p_row, g_row, u_row in zip(predicted, gold, unseen):
        right = [p == g for p, g in zip(p_row, g_row)]
        total += len(right)
        correct += sum(right)
        n_unseen += sum(u_row)
        correct_unseen += sum(r for r, u in zip(right, u_row) if u)
        whole += all(right)
    return {"accuracy": correct / max(1, total),
            "unseen_accuracy": correct_unseen / n_unseen if n_unseen else None,
            "unseen_words": n_unseen, "tokens": total,
            "sentence_accuracy": whole / max(1, len(gold))}


def describe_metrics(m: dict) -> str:
    """One line: "loss 0.19, accuracy 95.15%, unseen words 78.21% of 2088"."""
    unseen = ("-" if m.get("unseen_accuracy") is None
              else f"{100 * m['unseen_accuracy']:.2f}% of {m['unseen_words']}")
    return f"loss {m['loss']:.4f}, accuracy {100 * m['accuracy']:.2f}%, unseen words {unseen}"


@torch.no_grad()
def predict_tags(model: Tagger, data: Encoded, char_tok, device, batch_size: int = 64):
    """Tag ids per sentence, and the total NLL (nats) and token count if tagged."""
    model.eval()
    out: list[list[int]] = [[] for _ in data.words]
    nll, count = 0.0, 0
    for chunk in length_batches([len(w) for w in data.words], batch_size):
        tags = None if data.tags is None else [data.tags[i] for i in chunk]
        words, lengths, gold, chars, char_lengths, index = collate(
            [data.words[i] for i in chunk], tags, [data.forms[i] for i in chunk], char_tok)
        scores = model(words.to(device), lengths, _to(chars, device), char_lengths,
                       _to(index, device))
        best = scores.argmax(-1).cpu()
        for b, i in enumerate(chunk):
            out[i] = best[:len(data.words[i]), b].tolist()
        if gold is not None:
            nll += F.cross_entropy(scores.flatten(0, 1).double(), gold.to(device).flatten(),
                                   ignore_index=IGNORE, reduction="sum").item()
            count += int((gold != IGNORE).sum())
    return out, nll, count


def _to(t, device):
    return None if t is None else t.to(device)


def evaluation(model, data: Encoded, char_tok, device, world: World = SINGLE) -> dict:
    """Loss, token / unseen-word / sentence accuracy of tagged sentences, and the
    "objective" that selects the model (the error rate); in a distributed run each process
    tags its share, and every process gets the figures of the whole."""
    predicted, nll, count = predict_tags(model, data.share(world), char_tok, device)
    predicted, (nll, count) = world.gather(predicted), world.sum(nll, count)
    unseen = [[w == UNK_ID for w in row] for row in data.words]
    m = {"loss": nll / max(1, count), **tag_metrics(predicted, data.tags, unseen)}
    m["objective"] = error_objective(m)
    return m


class TaggerTask:
    """The tagging task for :class:`rnnkit.train.Trainer`."""

    name = TASK
    unit = "tok"
    world = SINGLE

    def __init__(self, model: Tagger, train: Encoded, valid: Encoded, char_tok, cfg,
                 seed: int, device):
        self.model, self.train, self.valid = model, train, valid
        self.char_tok, self.device = char_tok, device
        self.batches = ExampleBatches(len(train.words), cfg.batch_size,
                                      lengths=[len(w) for w in train.words], seed=seed,
                                      collate=self._collate)

    def _collate(self, indices):
        return collate([self.train.words[k] for k in indices],
                       [self.train.tags[k] for k in indices],
                       [self.train.forms[k] for k in indices], self.char_tok)

    def train_loss(self, batch):
        words, lengths, tags, chars, char_lengths, index = batch
        scores = self.model(words.to(self.device), lengths, _to(chars, self.device),
                            char_lengths, _to(index, self.device))
        loss = F.cross_entropy(scores.flatten(0, 1), tags.to(self.device).flatten(),
                               ignore_index=IGNORE)
        return loss, int(lengths.sum())

    def evaluate(self, split: str) -> dict:
        return evaluation(self.model, self.valid, self.char_tok, self.device, self.world)

    def describe(self, m: dict) -> str:
        return describe_metrics(m)


def prepare(cfg: TaggerDataConfig, options: dict, out: Path, *, resume: bool,
            log) -> recipe.Prepared:
    """The sentences of a run, its word and character vocabularies and tag set (built from
    the training data, or loaded on resume), encoded."""
    train, valid, _ = labelled_splits(cfg, lambda path: read_tagged(path, column=cfg.column)[0])
    train_path, valid_path, _ = split_sources(cfg)
    use_chars = options.get("char_hidden_size", TaggerConfig.char_hidden_size) > 0
    if resume:
        word_tok = load_tokenizer(out / "words")
        char_tok = load_tokenizer(out / "chars") if use_chars else None
        tags = checkpoint.read_json(out / "tags.json")["tags"]
    else:
        counts = Counter(w for s in train for w in s.words)
        word_tok = word_tokenizer_from_counts(counts, len(train))
        char_tok = build_char_tokenizer(list(counts)) if use_chars else None
        tags = sorted({t for s in train + valid for t in s.tags})
    train_set = encode_sentences(train, word_tok, tags, train_path)
    valid_set = encode_sentences(valid, word_tok, tags, valid_path)
    chars = char_tok.vocab_size if char_tok else 0
    files = {"words": word_tok, **({"chars": char_tok} if char_tok else {}),
             "tags.json": {"tags": tags}}
    return recipe.Prepared(
        sizes={"vocab_size": word_tok.vocab_size, "num_tags": len(tags),
               "char_vocab_size": chars},
        files=files, config={"tags": tags, "column": cfg.column},
        report=f"{len(tags)} tags; {word_tok.vocab_size:,} words, {chars} characters; train "
               f"{len(train):,} sentences, valid {len(valid):,}",
        make_task=lambda model, seed, device: TaggerTask(model, train_set, valid_set, char_tok,
                                                         cfg, seed, device))


def describe_model(cfg: TaggerConfig) -> str:
    chars = f", characters bi{cfg.cell} {cfg.char_hidden_size}" if cfg.char_hidden_size else ""
    return f"bi{cfg.cell} {cfg.num_layers}x{cfg.hidden_size}{chars}"


def train_tagger(data_cfg: TaggerDataConfig | None, model_options: dict | None,
                 train_cfg: TrainConfig | dict | None, out: str | Path, **options) -> dict:
    """Train a tagger into ``out``: see :func:`rnnkit.tasks.recipe.train` for the arguments;
    ``model_options`` are :class:`TaggerConfig` fields other than the vocabulary and tag-set
    sizes."""
    return recipe.train(SPEC, data_cfg, model_options, train_cfg, out, **options)


# -- using a trained model ----------------------------------------------------------------

def load_tagger(directory: str | Path, device: str | None = "cpu"):
    """(model in eval mode, word tokenizer, char tokenizer or None, config)."""
    directory = Path(directory)
    config = checkpoint.read_config(directory, TASK)
    model = recipe.load_model(SPEC, directory, config, device)
    word_tok = load_tokenizer(directory / "words")
    char_tok = load_tokenizer(directory / "chars") if model.config.char_hidden_size else None
    return model, word_tok, char_tok, config


def evaluate_file(directory: str | Path, path: str | Path, *, column: str | None = None,
                  device: str | None = "cpu") -> dict:
    """Loss, token accuracy, unseen-word accuracy and sentence accuracy on a tagged file."""
    model, word_tok, char_tok, config = load_tagger(directory, device)
    column = column or config["column"]
    sentences, _ = read_tagged(path, column=column)
    data = encode_sentences(sentences, word_tok, config["tags"], str(path))
    m = evaluation(model, data, char_tok, device_of(device))
    del m["objective"]
    return {**m, "sentences": len(sentences), "file": str(path), "column": column}


def predict_file(directory: str | Path, path: str | Path, out: str | Path | None = None, *,
                 column: str | None = None, device: str | None = "cpu"):
    """Tag every sentence of ``path`` (tags in it, if any, are ignored) and write it back in
    its own format to ``out`` (or return the text when ``out`` is None)."""
    model, word_tok, char_tok, config = load_tagger(directory, device)
    column = column or config["column"]
    sentences, fmt = read_tagged(path, column=column, require_tags=False)
    data = encode_sentences(sentences, word_tok, None, str(path))
    predicted, _, _ = predict_tags(model, data, char_tok, device_of(device))
    tags = config["tags"]
    names = [[tags[i] for i in row] for row in predicted]
    if out is not None:
        write_tagged(out, sentences, names, fmt, column=column)
        return None
    return format_tagged(sentences, names, fmt, column=column)


# -- the declaration ------------------------------------------------------------------------

def _evaluate(directory, path, *, device: str = "cpu", **_) -> dict:
    return evaluate_file(directory, path, device=device)


def evaluation_report(m: dict, path) -> list[str]:
    """``rnnkit eval``'s line for the figures of :func:`evaluate_file`."""
    return [f"{path}: {describe_metrics(m)}; {m['tokens']:,} tokens, {m['sentences']:,} "
            f"sentences ({100 * m['sentence_accuracy']:.1f}% entirely right)"]


def _predict(directory, path, *, out=None, device: str = "cpu", **_) -> str | None:
    return predict_file(directory, path, out, device=device)


SPEC = recipe.TaskSpec(
    name=TASK, summary="a sequence tagger (many-to-many aligned)",
    description="Train a tagger of CoNLL-U (UPOS or XPOS) or 'word<TAB>tag' files: word "
    "embedding + character encoding, bidirectional recurrent stack.",
    data_config=TaggerDataConfig, model_config=TaggerConfig, model=Tagger, prepare=prepare,
    describe_model=describe_model,
    train_defaults={"optimizer": "adam", "lr": 2e-3, "clip": 5.0, "lr_decay": 2.0,
                    "epochs": 20},
    evaluate=_evaluate, report=evaluation_report, predict=_predict,
    use="rnnkit predict",
    init_from=lambda model, prepared, directory, log: init_encoder(
        model.encoder, prepared.files["words"], directory, log))

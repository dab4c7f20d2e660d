"""Language modelling, end to end: train, evaluate, score sentences, generate.

These functions are the Python API behind ``rnnkit train lm``, ``rnnkit eval``,
``rnnkit score`` and ``rnnkit generate``::

    from rnnkit.tasks import lm
    summary = lm.train_lm(lm.LMDataConfig(data="data/ptb", level="word"),
                          {"cell": "lstm", "hidden_size": 200, "num_layers": 2},
                          TrainConfig(epochs=13, lr=20.0), out="runs/ptb")
    lm.evaluate_file("runs/ptb", "data/ptb/ptb.test.txt")   # {"ppl": …, "loss": …, …}
    lm.score_lines("runs/ptb", "sentences.txt")             # per-line log-probabilities
    lm.generate("runs/ptb", "the market", max_tokens=30, temperature=0.8, seed=1)

Perplexity conventions, stated in every report: every line ends with a line-end token
(``<eos>``; at character level the newline character), which is predicted like any other
token; ``<unk>`` is predicted as an ordinary token (the share of ``<unk>`` targets is
reported); word-level perplexity of a subword model divides the same total log-likelihood
by the number of words (whitespace-separated, plus one ``<eos>`` per line); bits per
character are nats per character / ln 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rnnkit import checkpoint
from rnnkit.config import check_fields, option
from rnnkit.data import (SentenceBatches, StreamBatches, TokenArray, TokenLines, build_tokenizer,
                         encode_to_cache, find_splits, iter_lines, load_tokenizer, open_cache)
from rnnkit.data.pycorpus import write_python_corpus
from rnnkit.data.stream import collate_lines
from rnnkit.layers import RecurrentStack, detach_state, length_mask
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.ngram import DEFAULT_WEIGHT
from rnnkit.tasks import recipe
from rnnkit.tasks.common import device_of, length_batches, logits_tokens
from rnnkit.train import TrainConfig
from rnnkit.train.metrics import perplexity
from rnnkit.train.distributed import SINGLE, World

TASK = "lm"
LEVELS = ("char", "word", "bpe")

# Defaults that differ by level: a character model wants long windows and Adam; a word
# model Zaremba's SGD at lr 20 with the divide-by-4 schedule. The data config fills in
# batch_size and bptt; the recipe the training fields.
LEVEL_DEFAULTS = {
    "char": {"bptt": 100, "batch_size": 32, "optimizer": "adam", "lr": 2e-3, "clip": 1.0,
             "lr_decay": 2.0},
    "word": {"bptt": 35, "batch_size": 20, "optimizer": "sgd", "lr": 20.0, "clip": 0.25,
             "lr_decay": 4.0},
    "bpe": {"bptt": 35, "batch_size": 20, "optimizer": "sgd", "lr": 20.0, "clip": 0.25,
            "lr_decay": 4.0},
}


@dataclass(frozen=True)
class LMDataConfig:
    """Where the text comes from and how it is cut into batches (``batch_size`` and
    ``bptt`` 0: the level's, see :data:`LEVEL_DEFAULTS`)."""

    data: str = option("", "text file or folder with train/valid[/test] files (default: a "
                       "corpus of Python standard-library source built on the spot)")
    level: str = option("char", "what a token is", choices=LEVELS)
    valid_fraction: float = option(0.1, "share of lines held out for validation when there "
                                   "is no valid file")
    min_count: int = option(1, "rarer tokens become <unk> (char, word)")
    max_vocab: int = option(0, "keep the most frequent N tokens (0: all; char, word)")
    bpe_vocab_size: int = option(8000, "BPE vocabulary size")
    batch_size: int = option(0, "streams per batch")
    bptt: int = option(0, "truncated-BPTT window")
    eval_batch_size: int = option(10, "streams when evaluating")
    random_length: bool = option(False, "AWD-LSTM's random window length")
    sentence_mode: bool = option(False, "reset the state at every line (lines shuffled) "
                                 "instead of carrying it; validation always reads the stream")

    def __post_init__(self):
        for name in ("batch_size", "bptt"):
            if getattr(self, name) == 0 and self.level in LEVEL_DEFAULTS:
                object.__setattr__(self, name, LEVEL_DEFAULTS[self.level][name])
        checks = [("level", lambda c: c.level in LEVELS, f"one of {list(LEVELS)}"),
                  ("valid_fraction", lambda c: 0 < c.valid_fraction < 1, "a number in (0, 1)"),
                  ("min_count", lambda c: c.min_count >= 1, "an int >= 1"),
                  ("max_vocab", lambda c: c.max_vocab >= 0, "an int >= 0"),
                  ("bpe_vocab_size", lambda c: c.bpe_vocab_size >= 259, "an int >= 259"),
                  ("batch_size", lambda c: c.batch_size >= 1, "an int >= 1"),
                  ("bptt", lambda c: c.bptt >= 1, "an int >= 1"),
                  ("eval_batch_size", lambda c: c.eval_batch_size >= 1, "an int >= 1")]
        check_fields(self, checks)


# -- data ---------------------------------------------------------------------------------

def corpus_files(cfg: LMDataConfig, out: Path):
    """The corpus splits; with no ``data``, the standard-library corpus written into ``out``."""
    path = cfg.data or str(write_python_corpus(out / "corpus" / "python-stdlib.txt"))
    return find_splits(path, cfg.valid_fraction)


def encoded_split(tokenizer, split, out: Path, name: str):
    """A split's token ids, from the memory-mapped cache in ``out/cache`` (built once)."""
    path = out / "cache" / f"{name}.ids"
    path.parent.mkdir(parents=True, exist_ok=True)
    source = split.fingerprint()
    tokens = open_cache(path, tokenizer, source=source)
    if tokens is None:
        tokens = encode_to_cache(tokenizer, split, path, source=source)
    if len(tokens) == 0:
        raise ValueError(f"{split.describe()}: no tokens")
    return tokens


class _Windows:
    """StreamBatches seen through the training loop's ``next_batch`` interface."""

    def __init__(self, stream: StreamBatches):
        self.stream = stream

    def next_batch(self):
        return self.stream.next_window()

    def reset_epoch(self):
        self.stream.reset_epoch()

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)

    def shard(self, rank: int, processes: int) -> None:
        self.stream.shard(rank, processes)


# -- evaluation ---------------------------------------------------------------------------

def _stream_nll(model: LanguageModel, tokens, batch_size: int, bptt: int, device,
                world: World = SINGLE) -> tuple[float, int]:
    """Total NLL (nats) and number of predicted tokens of a whole id array, state carried;
    in a distributed run, of this process's share of the ``batch_size`` streams."""
    model.eval()
    batch_size = max(1, min(batch_size, len(tokens) // 2))
    stream = StreamBatches(tokens, batch_size, bptt)
    columns = world.share(range(batch_size))
    if not columns:
        return 0.0, 0
    stream.read_columns(columns, batch_size)
    state, total, count = None, 0.0, 0
    with torch.no_grad():
        while (window := stream.next_window()) is not None:
            inputs, targets = (t.to(device) for t in window)
            hidden, state = model(inputs, state)
            total += model.nll(hidden, targets).double().sum().item()
            count += targets.numel()
    return total, count


def _stream_token_nll(model: LanguageModel, tokens, bptt: int, device) -> torch.Tensor:
    """NLL (nats, float64) of every predicted token of an id array in order, read as one
    stream (state carried): (len(tokens) - 1,), token k+1 given tokens 0..k."""
    model.eval()
    stream = StreamBatches(tokens, 1, bptt)
    state, out = None, []
    with torch.no_grad():
        while (window := stream.next_window()) is not None:
            inputs, targets = (t.to(device) for t in window)
            hidden, state = model(inputs, state)
            out.append(model.nll(hidden, targets).double().cpu().reshape(-1))
    return torch.cat(out)


def _dynamic_nll(model: LanguageModel, tokens, batch_size: int, bptt: int, device,
                 lr: float) -> tuple[float, int]:
    """:func:`_stream_nll` with dynamic evaluation (Mikolov 2010; Krause et al. 2018): a copy
    of the model is scored on each window, then takes one SGD step of rate ``lr`` on that
    window's mean loss — every token is predicted before the model learns from it. Dropout
    stays off; the model given (and its files) are untouched."""
    import copy

    model = copy.deepcopy(model).eval()
    if torch.device(device).type == "cuda":
        # cuDNN's backward refuses a layer in eval mode (which keeps dropout off): the
        # copy's recurrent layers take rnnkit's own engine, which has no such rule
        for layer in model.modules():
            if isinstance(layer, RecurrentStack):
                layer.backend = "bptt"
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batch_size = max(1, min(batch_size, len(tokens) // 2))
    stream = StreamBatches(tokens, batch_size, bptt)
    state, total, count = None, 0.0, 0
    while (window := stream.next_window()) is not None:
        inputs, targets = (t.to(device) for t in window)
        hidden, state = model(inputs, state)
        nll = model.nll(hidden, targets)
        total += nll.detach().double().sum().item()
        count += targets.numel()
        optimizer.zero_grad(set_to_none=True)
        nll.mean().backward()
        optimizer.step()
        state = detach_state(state)
    return total, count


def _metrics(tokenizer, total: float, count: int, ids: list[int], words: int) -> dict:
    """Figures for an evaluated text: ``total`` nats over ``count`` predicted tokens.

    Per-word and per-character figures rescale the per-token loss by the text's ratio of
    tokens to words (``words`` counts one line end per line).
    """
    loss = total / count
    m = {"loss": loss, "ppl": perplexity(loss), "tokens": count,
         "unk_rate": sum(1 for i in ids if i == tokenizer.unk_id) / len(ids)}
    if tokenizer.level == "char":
        m["bpc"] = loss / math.log(2)
        m["policy"] = "every character predicted, the newline included"
    else:
        m["policy"] = ("<eos> closes every line and is predicted as a token; <unk> is "
                       "predicted as a token")
    if tokenizer.level == "bpe":
        m["word_ppl"] = perplexity(loss * len(ids) / words)
    return m


def describe_metrics(m: dict) -> str:
    """One line: "loss 4.711, ppl 111.2 (unk 4.8%)" / "… bpc 1.52"."""
    s = f"loss {m['loss']:.4f}, ppl {m['ppl']:.2f}"
    if "bpc" in m:
        s += f", bpc {m['bpc']:.3f}"
    if "word_ppl" in m:
        s += f", word ppl {m['word_ppl']:.2f}"
    if m.get("unk_rate"):
        s += f" (<unk> {100 * m['unk_rate']:.1f}% of targets)"
    return s


class LMTask:
    """The language-model task for :class:`rnnkit.train.Trainer`."""

    name = TASK
    unit = "tok"
    world = SINGLE

    def __init__(self, model: LanguageModel, tokenizer, train_tokens, valid_tokens,
                 cfg: LMDataConfig, seed: int, device):
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device
        self.valid_tokens = valid_tokens
        if cfg.sentence_mode:
            self.batches = SentenceBatches(TokenLines(train_tokens, tokenizer.line_end_id),
                                           cfg.batch_size, end_id=tokenizer.line_end_id,
                                           pad_id=tokenizer.pad_id, seed=seed)
        else:
            self.batches = _Windows(StreamBatches(train_tokens, cfg.batch_size, cfg.bptt,
                                                  random_length=cfg.random_length, seed=seed))
        self.carry = None

    def train_loss(self, batch):
        if self.cfg.sentence_mode:
            inputs, targets, lengths = batch
            hidden, _ = self.model(inputs.to(self.device), None, lengths=lengths)
            mask = length_mask(lengths, targets.shape[0], self.device)
            nll = self.model.nll(hidden, targets.to(self.device))
            return nll[mask].mean(), int(lengths.sum())
        inputs, targets = (t.to(self.device) for t in batch)
        hidden, state = self.model(inputs, self.carry)
        self.carry = detach_state(state)                  # truncated BPTT: keep, detached
        return self.model.nll(hidden, targets).mean(), targets.numel()

    def evaluate(self, split: str) -> dict:
        total, count = self.world.sum(*_stream_nll(
            self.model, self.valid_tokens, self.cfg.eval_batch_size, self.cfg.bptt,
            self.device, self.world))
        return {"loss": total / count, "ppl": perplexity(total / count)}

    def describe(self, metrics: dict) -> str:
        return describe_metrics(metrics)

    def reset_carry(self):
        self.carry = None

    def carry_tensors(self) -> dict:
        if self.carry is None:
            return {}
        return {f"{k}.{j}": t for k, layer in enumerate(self.carry)
                for j, t in enumerate(layer if isinstance(layer, tuple) else (layer,))}

    def load_carry(self, tensors: dict) -> None:
        if not tensors:
            self.carry = None
            return
        layers = []
        for k, layer in enumerate(self.model.layers):
            parts = [tensors[f"{k}.{j}"].to(self.device) for j in range(layer.cell.num_states)]
            layers.append(tuple(parts) if len(parts) > 1 else parts[0])
        if self.model.direct is not None:                # the direct connections' history
            layers.append(tensors[f"{len(layers)}.0"].to(self.device))
        self.carry = tuple(layers)


# -- training -----------------------------------------------------------------------------

def prepare(cfg: LMDataConfig, options: dict, out: Path, *, resume: bool,
            log) -> recipe.Prepared:
    """The corpus of a run: its vocabulary (built from the training split, or loaded on
    resume) and its splits encoded into ``out/cache``."""
    files = corpus_files(cfg, out)
    if resume:
        tokenizer = load_tokenizer(out)
    else:
        log(f"building the {cfg.level} vocabulary from {files.train.describe()}")
        tokenizer = build_tokenizer(cfg.level, files.train, min_count=cfg.min_count,
                                    max_size=cfg.max_vocab or None,
                                    bpe_vocab_size=cfg.bpe_vocab_size)
    train_tokens = encoded_split(tokenizer, files.train, out, "train")
    valid_tokens = encoded_split(tokenizer, files.valid, out, "valid")
    report = (f"{tokenizer.level} vocabulary {tokenizer.vocab_size}; train "
              f"{len(train_tokens):,} tokens ({files.train.describe()}), valid "
              f"{len(valid_tokens):,} ({files.valid.describe()})")
    return recipe.Prepared(
        sizes={"vocab_size": tokenizer.vocab_size}, files={"": tokenizer},
        config={"level": tokenizer.level, "data": asdict(cfg)}, report=report,
        make_task=lambda model, seed, device: LMTask(model, tokenizer, train_tokens,
                                                     valid_tokens, cfg, seed, device),
        model_kwargs={"counts": tokenizer.counts})


def describe_model(cfg: LMConfig) -> str:
    text = f"{cfg.cell} {cfg.num_layers}x{cfg.hidden_size}, {cfg.softmax} softmax"
    if cfg.direct_size:
        text += (f", direct connections of order {cfg.direct_order} ({cfg.direct_size:,} "
                 f"weights, {cfg.direct_bytes / 2 ** 20:,.1f} MiB)")
    return text


@dataclass(frozen=True)
class SampleOptions:
    """What a finished run prints."""

    sample_chars: int = option(400, "tokens of sample text printed at the end (0: none)",
                               flag="--sample")

    def __post_init__(self):
        check_fields(self, [("sample_chars", lambda c: c.sample_chars >= 0, "an int >= 0")])


def print_sample(task: LMTask, summary: dict, train_cfg, log, sample_chars: int = 0) -> None:
    """After training, log a sample of ``sample_chars`` tokens (characters for a character
    model) and add it to the summary."""
    if not sample_chars:
        return
    log("sample:")
    prime = "\n" if task.tokenizer.level == "char" else ""
    text = _generate_with(task.model, task.tokenizer, prime or None, max_tokens=sample_chars,
                          temperature=0.8, seed=train_cfg.seed, on_text=None)
    log(text)
    summary["sample"] = text


def train_lm(data_cfg: LMDataConfig | None, model_options: dict | None,
             train_cfg: TrainConfig | dict | None, out: str | Path, **options) -> dict:
    """Train a language model into the directory ``out``: see
    :func:`rnnkit.tasks.recipe.train` for the arguments (and ``sample_chars``: after
    training, print a sample of this many tokens). ``model_options`` are :class:`LMConfig`
    fields other than ``vocab_size`` (the task's defaults: 256 hidden units, 2 layers); a
    field of ``train_cfg`` left at TrainConfig's default takes the level's
    (:data:`LEVEL_DEFAULTS`), as ``rnnkit train lm`` does."""
    return recipe.train(SPEC, data_cfg, model_options, train_cfg, out, **options)


# -- using a trained model ----------------------------------------------------------------

def load_lm(directory: str | Path, device: str | None = "cpu", *, int8: bool = False,
            log=None):
    """(model in eval mode, tokenizer, config) of a language-model directory; with
    ``int8``, the model's dynamic int8 copy (:func:`rnnkit.quantize.quantize_lm`, CPU),
    what was quantised said to ``log``."""
    config = checkpoint.read_config(directory, TASK)
    tokenizer = load_tokenizer(directory)
    model = recipe.load_model(SPEC, directory, config, device,
                              {"vocab_size": tokenizer.vocab_size}, counts=tokenizer.counts)
    if int8:
        from rnnkit.quantize import quantize_lm

        model, described = quantize_lm(model)
        if log is not None:
            log(described)
    return model, tokenizer, config


def evaluate_file(directory: str | Path, path: str | Path, *, batch_size: int = 10,
                  bptt: int = 0, device: str | None = "cpu", int8: bool = False,
                  dynamic: float = 0.0, ngram: str | Path | None = None,
                  ngram_weight: float = DEFAULT_WEIGHT) -> dict:
    """Perplexity of a model on a text file (per token, and per the level's natural unit).

    With ``int8`` the figures are the int8 model's (:func:`rnnkit.quantize.quantize_lm`),
    and ``m["int8"]`` holds what was quantised and the float model's loss and perplexity on
    the same text, ``m["int8"]["ppl_change"]`` the relative change (int8 / float - 1).
    With ``dynamic`` > 0 the figures are those of dynamic evaluation at that learning rate
    (:func:`_dynamic_nll`; ``m["dynamic"]`` says how), the files on disk untouched.
    With ``ngram`` (an ARPA or KenLM file) the figures are those of the per-token linear
    interpolation with it, ``ngram_weight`` the n-gram's share (:mod:`rnnkit.ngram`), the text
    read as one stream; ``m["ngram"]`` holds each model's perplexity alone on the same
    tokens and the vocabulary policy.
    """
    if ngram is not None and (dynamic or int8):
        raise ValueError("--ngram: not with --dynamic or --int8")
    if not (dynamic >= 0 and math.isfinite(dynamic)):
        raise ValueError(f"--dynamic: expected a learning rate >= 0 (0: static), got {dynamic}")
    if dynamic and int8:
        raise ValueError("--dynamic: not with --int8 (an int8 model is not trained)")
    model, tokenizer, config = load_lm(directory, device)
    bptt = bptt or config.get("data", {}).get("bptt", 35)
    ids, words = [], 0
    for line in iter_lines(path):
        ids.extend(tokenizer.encode_line(line))
        words += len(line.split()) + 1
    if len(ids) < 2:
        raise ValueError(f"{path}: too little text to evaluate ({len(ids)} tokens)")
    tokens = TokenArray.from_ids(ids, tokenizer.vocab_size)
    if ngram is not None:
        return _interpolated_eval(model, tokenizer, path, ids, words, tokens, bptt,
                                  device_of(device), ngram, ngram_weight)
    if dynamic:
        total, count = _dynamic_nll(model, tokens, batch_size, bptt, device_of(device),
                                    dynamic)
    else:
        total, count = _stream_nll(model, tokens, batch_size, bptt, device_of(device))
    m = _metrics(tokenizer, total, count, ids, words)
    if dynamic:
        m["dynamic"] = {"lr": dynamic, "window": bptt,
                        "streams": max(1, min(batch_size, len(ids) // 2))}
    if int8:
        from rnnkit.quantize import quantize_lm

        quantized, described = quantize_lm(model)
        total8, _ = _stream_nll(quantized, tokens, batch_size, bptt, device_of(device))
        float_figures = {"loss": m["loss"], "ppl": m["ppl"]}
        m = _metrics(tokenizer, total8, count, ids, words)
        m["int8"] = {"quantised": described, "float": float_figures,
                     "ppl_change": m["ppl"] / float_figures["ppl"] - 1}
    m["file"] = str(path)
    return m


def _interpolated_eval(model, tokenizer, path, ids, words, tokens, bptt, device, ngram,
                       weight) -> dict:
    """:func:`evaluate_file` interpolated with an n-gram model (see there)."""
    from rnnkit.ngram import NGram, check_weight, interpolate

    check_weight(weight)
    ngram = NGram(ngram, tokenizer)
    ngram_log10 = torch.tensor([p for line in iter_lines(path) for p in ngram.line_log10(line)],
                               dtype=torch.float64)
    rnn = -_stream_token_nll(model, tokens, bptt, device)
    ngram_log10 = ngram_log10[1:]                     # the stream predicts tokens 1..N-1
    if len(ngram_log10) != len(rnn):
        raise ValueError(f"{path}: the n-gram scored {len(ngram_log10)} tokens, rnnkit "
                         f"{len(rnn)}")
    total = -float(interpolate(rnn, ngram_log10, weight).sum())
    m = _metrics(tokenizer, total, len(rnn), ids, words)
    m["ngram"] = {"file": ngram.path, "weight": weight, "policy": ngram.policy(),
                  "rnnkit_ppl": perplexity(-float(rnn.sum()) / len(rnn)),
                  "ngram_ppl": perplexity(-float(ngram_log10.sum()) * math.log(10) / len(rnn))}
    m["file"] = str(path)
    return m


_SCORE_GROUP_CHARS = 1 << 20      # characters of the lines read and scored at a time


def score_lines(directory: str | Path, path: str | Path, *, batch_size: int = 32,
                device: str | None = "cpu", int8: bool = False,
                ngram: str | Path | None = None,
                ngram_weight: float = DEFAULT_WEIGHT) -> list[dict]:
    """Log-probability of every line of a file, each line on its own (state reset).

    Each line is scored from the line-end token as its context; its tokens include the
    closing line end. Returns one dict per line: line (1-based), logprob (natural log),
    log10prob, tokens, ppl, text. :func:`iter_scores` gives them one at a time; ``int8``
    scores with the model's int8 copy (:func:`load_lm`); ``ngram`` interpolates with an
    n-gram model (:func:`iter_scores`).
    """
    return list(iter_scores(directory, path, batch_size=batch_size, device=device,
                            int8=int8, ngram=ngram, ngram_weight=ngram_weight))


def iter_scores(directory: str | Path, path: str | Path, *, batch_size: int = 32,
                device: str | None = "cpu", int8: bool = False, log=None,
                ngram: str | Path | None = None,
                ngram_weight: float = DEFAULT_WEIGHT) -> Iterator[dict]:
    """:func:`score_lines`, a line at a time, in memory bounded by the longest line: the
    file is read a group of lines at a time, batches hold at most
    ``rnnkit.config.BATCH_TOKENS`` tokens and ``BATCH_LOGITS`` output scores, and a line
    longer than that is read in windows carrying the state (the same score as read whole).
    With ``ngram`` each token's probability is interpolated with the n-gram model's
    (:mod:`rnnkit.ngram`; ``ngram_weight`` its share), the policy said to ``log``.
    """
    model, tokenizer, _ = load_lm(directory, device, int8=int8, log=log)
    if ngram is not None:
        from rnnkit.ngram import NGram, check_weight

        check_weight(ngram_weight)
        ngram = NGram(ngram, tokenizer)
        if log is not None:
            log(ngram.policy())
    k = 0
    for texts in _groups(iter_lines(path), _SCORE_GROUP_CHARS):
        rows = score_texts(model, tokenizer, texts, batch_size=batch_size, ngram=ngram,
                           ngram_weight=ngram_weight, first_line=k + 1)
        k += len(rows)
        yield from rows
    if k == 0:
        raise ValueError(f"{path}: no lines to score")


@torch.no_grad()
def score_texts(model, tokenizer, texts: list[str], *, batch_size: int = 32, ngram=None,
                ngram_weight: float = DEFAULT_WEIGHT, first_line: int = 1,
                state=None) -> list[dict]:
    """The rows of :func:`score_lines` for lines in memory on a loaded model (each line on
    its own): lines by length in batches of at most BATCH_TOKENS tokens and BATCH_LOGITS
    scores, a longer line read in windows carrying the state. ``ngram``: a loaded
    :class:`rnnkit.ngram.NGram` to interpolate with; rows are numbered from ``first_line``;
    ``state`` (a batch of one, as ``model`` returns it; None: fresh) starts every line.
    """
    window = logits_tokens(model.config.vocab_size)
    end_id, pad_id = tokenizer.line_end_id, tokenizer.pad_id
    lines = [torch.tensor(tokenizer.encode_line(t), dtype=torch.long) for t in texts]
    token_nll: list[torch.Tensor] = [torch.empty(0)] * len(lines)
    for chunk in length_batches([len(line) for line in lines], batch_size, window):
        if len(chunk) == 1:
            token_nll[chunk[0]], _ = line_nll(model, lines[chunk[0]], end_id, window, state)
            continue
        inputs, targets, lengths = collate_lines([lines[i] for i in chunk], end_id, pad_id)
        start = None if state is None else expand_state(state, len(chunk))
        nll, _ = _nll(model, inputs, targets, lengths, start)
        for b, i in enumerate(chunk):
            token_nll[i] = nll[:int(lengths[b]), b]
    rows = []
    for k, (text, line, nll) in enumerate(zip(texts, lines, token_nll)):
        if ngram is not None:
            from rnnkit.ngram import interpolate

            nll = -interpolate(-nll, torch.tensor(ngram.line_log10(text), dtype=torch.float64),
                               ngram_weight)
        total, n = float(nll.sum()), len(line)
        rows.append({"line": first_line + k, "logprob": -total,
                     "log10prob": -total / math.log(10), "tokens": n,
                     "ppl": perplexity(total / n), "text": text})
    return rows


def expand_state(state, batch: int):
    """A language model's state of one stream repeated for ``batch`` streams (every tensor's
    batch is its dim 1)."""
    return tuple(expand_state(s, batch) if isinstance(s, tuple)
                 else s.expand(s.shape[0], batch, *s.shape[2:]).contiguous() for s in state)


def _groups(lines: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    """Consecutive lines in lists of about ``max_chars`` characters (a longer line alone)."""
    group, size = [], 0
    for line in lines:
        if group and size + len(line) > max_chars:
            yield group
            group, size = [], 0
        group.append(line)
        size += len(line)
    if group:
        yield group


def _nll(model, inputs, targets, lengths=None, state=None):
    """(T, B) NLL in float64 on the CPU of a batch of lines (and the state after it)."""
    device = model.embedding.weight.device
    hidden, state = model(inputs.to(device), state, lengths=lengths)
    return model.nll(hidden, targets.to(device)).double().cpu(), state


def line_nll(model, line: torch.Tensor, end_id: int, window: int, state=None):
    """NLL (nats, float64) of each token of one line of ids (ending with ``end_id``), read
    ``window`` tokens at a time with the state carried over from ``state`` (None: fresh):
    (len(line),), and the state after the line (whose ``<eos>`` is the next input)."""
    inputs, targets, _ = collate_lines([line], end_id, end_id)
    out = []
    for t in range(0, len(line), window):
        nll, state = _nll(model, inputs[t:t + window], targets[t:t + window], state=state)
        out.append(nll.reshape(-1))
    return torch.cat(out), state


class _RunningText:
    """A tokenizer seen as endless text: ``<eos>`` decodes to a newline and does not end
    generation (pass ``stop="\n"`` to stop at the end of a line)."""

    eos_id = None

    def __init__(self, tokenizer):
        self.encode, self.decode = tokenizer.encode, tokenizer.decode


def _generate_with(model, tokenizer, prime: str | None, *, max_tokens: int, on_text=None,
                   stop=(), **sampling) -> str:
    from rnnkit.generate import generate_text

    if not prime:
        prime = "\n"                                  # start of a line: the line-end token
    return generate_text(model, _RunningText(tokenizer), prime, max_tokens=max_tokens,
                         stop=stop, on_text=on_text, **sampling)


def generate(directory: str | Path, prime: str = "", *, max_tokens: int = 200,
             on_text=None, stop=(), beam: int = 0, device: str | None = "cpu",
             int8: bool = False, log=None, **sampling) -> str:
    """Continue ``prime`` with a trained model; returns the text.

    ``sampling``: temperature, top_k, top_p, greedy, seed; pieces stream to ``on_text`` as
    they are produced. ``beam`` > 0 runs beam search of that width instead (length-
    normalised; a word or subword hypothesis ends at ``<eos>``) and returns the best.
    ``int8``: generate with the model's int8 copy (:func:`load_lm`).
    """
    model, tokenizer, _ = load_lm(directory, device, int8=int8, log=log)
    return generate_from(model, tokenizer, prime, max_tokens=max_tokens, on_text=on_text,
                         stop=stop, beam=beam, **sampling)


def generate_from(model, tokenizer, prime: str = "", *, max_tokens: int = 200, on_text=None,
                  stop=(), beam: int = 0, **sampling) -> str:
    """:func:`generate` with a loaded step model (e.g. a conditioned one) and tokenizer."""
    if not beam:
        return _generate_with(model, tokenizer, prime, max_tokens=max_tokens,
                              on_text=on_text, stop=stop, **sampling)
    from rnnkit.generate import beam_search

    prime_ids = tokenizer.encode(prime or "\n")
    best, _ = beam_search(model, prime_ids, beam_size=beam, max_tokens=max_tokens,
                          eos_id=tokenizer.eos_id)[0]
    text = tokenizer.decode(prime_ids + best)[len(tokenizer.decode(prime_ids)):]
    for s in ([stop] if isinstance(stop, str) else stop):
        text = text.split(s)[0]
    if on_text is not None and text:
        on_text(text)
    return text


# -- the declaration ------------------------------------------------------------------------

def _evaluate(directory, path, *, device: str = "cpu", batch_size: int = 10,
              int8: bool = False, dynamic: float = 0.0, ngram=None,
              ngram_weight: float = DEFAULT_WEIGHT, **_) -> dict:
    return evaluate_file(directory, path, batch_size=batch_size, device=device, int8=int8,
                         dynamic=dynamic, ngram=ngram, ngram_weight=ngram_weight)


def evaluation_report(m: dict, path) -> list[str]:
    """``rnnkit eval``'s lines for the figures of :func:`evaluate_file`."""
    lines = [f"{path}: {describe_metrics(m)}; {m['tokens']:,} tokens predicted",
             f"policy: {m['policy']}"]
    if "ngram" in m:
        g = m["ngram"]
        lines += [g["policy"], f"interpolated with weight {g['weight']:g} on the n-gram, "
                  f"the text read as one stream: rnnkit alone ppl {g['rnnkit_ppl']:.3f}, "
                  f"n-gram alone ppl "
                  f"{g['ngram_ppl']:.3f}, together ppl {m['ppl']:.3f}"]
    if "dynamic" in m:
        d = m["dynamic"]
        lines.append(f"dynamic evaluation: one SGD step of rate {d['lr']:g} after each window "
                     f"of {d['window']} tokens x {d['streams']} streams (files untouched)")
    if "int8" in m:
        q = m["int8"]
        lines.append(f"{q['quantised']}; float model: ppl {q['float']['ppl']:.3f}, "
                     f"int8 changes it by {100 * q['ppl_change']:+.2f}%")
    return lines


SPEC = recipe.TaskSpec(
    name=TASK, summary="a recurrent language model",
    description="Train a recurrent language model. With no --data, trains a small character "
    "LSTM on Python's own standard-library source for 4 minutes and prints a sample.",
    data_config=LMDataConfig, model_config=LMConfig, model=LanguageModel, prepare=prepare,
    describe_model=describe_model, model_defaults={"hidden_size": 256, "num_layers": 2},
    defaults_by=(("level", LEVEL_DEFAULTS), ("data", {"": {"max_minutes": 4.0}})),
    not_options=frozenset({"condition_size", "condition_mode"}),
    finish=print_sample, run_options=SampleOptions, default_out="runs/lm",
    evaluate=_evaluate, report=evaluation_report, use="rnnkit generate")

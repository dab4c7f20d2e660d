"""Translation with an attentional encoder–decoder, end to end: train, evaluate (BLEU and
chrF with sacrebleu), translate, draw the attention of a sentence.

The Python API behind ``rnnkit train translator``, ``rnnkit eval`` and
``rnnkit translate``::

    from rnnkit.tasks import translator
    translator.train_translator(
        translator.TranslationDataConfig(data="data/multi30k", source_lang="de",
                                         target_lang="en"),
        {"cell": "gru", "hidden_size": 256}, TrainConfig(epochs=10, optimizer="adam",
        lr=1e-3), out="runs/de-en")
    translator.evaluate_file("runs/de-en", "test.de", "test.en", beam=5)  # {"bleu": …}
    translator.translate_lines("runs/de-en", ["Ein Hund läuft."], beam=5)

Text: each side is tokenized by its own byte-level BPE (HuggingFace ``tokenizers``) or
word vocabulary, trained on the training side only; translations are decoded back to
plain text, and BLEU/chrF are computed by sacrebleu on that detokenized text against the
raw references (sacrebleu's default 13a tokenization), so the figures compare with
published sacrebleu scores. Training may skip pairs longer than ``max_length`` tokens
(the count is reported); translation reads every sentence whole, whatever its length, and
stops a hypothesis at ``2 × source length + 10`` tokens (reported when it happens).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnkit import checkpoint
from rnnkit.config import check_fields, option
from rnnkit.data import build_tokenizer, load_tokenizer
from rnnkit.data.labelled import SentencePair, read_parallel
from rnnkit.data.stream import ExampleBatches
from rnnkit.models.seq2seq import (BOS_ID, EOS_ID, PAD_ID, Seq2Seq, Seq2SeqConfig,
                                   TranslationSearch, greedy_translate)
from rnnkit.tasks import recipe
from rnnkit.tasks.common import (device_of, encode_bounded, find_split_file, length_batches,
                                 logits_tokens, pad)
from rnnkit.train import TrainConfig
from rnnkit.train.metrics import perplexity
from rnnkit.train.distributed import SINGLE

TASK = "translator"


@dataclass(frozen=True)
class TranslationDataConfig:
    """Where the sentence pairs come from and how they are tokenized and batched.

    ``data`` is a folder with ``{split}.{lang}`` files (split names containing train,
    val/valid/dev, test — e.g. Multi30k's ``train.de``, ``val.de``, ``test_2016_flickr.de``)
    or ``{split}.tsv`` files of ``source<TAB>target`` pairs; or give ``train`` and ``valid``
    explicitly, each ``"SRC_FILE,TGT_FILE"`` or one TSV file.
    """

    data: str = option("", "folder of {split}.{lang} files (or {split}.tsv pairs)")
    source_lang: str = option("de", "source file suffix")
    target_lang: str = option("en", "target file suffix")
    train: str = option("", "training pairs: SRC_FILE,TGT_FILE or a TSV")
    valid: str = option("", "validation pairs: SRC_FILE,TGT_FILE or a TSV")
    level: str = option("bpe", "byte-level BPE subwords, or words", choices=("bpe", "word"))
    source_vocab_size: int = option(8000, "source BPE vocabulary size")
    target_vocab_size: int = option(8000, "target BPE vocabulary size")
    min_count: int = option(2, "word level: rarer words become <unk>")
    max_length: int = option(0, "skip training pairs longer than this many tokens on either "
                             "side, and count them (0: keep all)")
    batch_size: int = option(64, "pairs per batch")

    def __post_init__(self):
        check_fields(self, [
            ("level", lambda c: c.level in ("bpe", "word"), "'bpe' or 'word'"),
            ("source_vocab_size", lambda c: c.source_vocab_size >= 259, "an int >= 259"),
            ("target_vocab_size", lambda c: c.target_vocab_size >= 259, "an int >= 259"),
            ("min_count", lambda c: c.min_count >= 1, "an int >= 1"),
            ("max_length", lambda c: c.max_length >= 0, "an int >= 0"),
            ("batch_size", lambda c: c.batch_size >= 1, "an int >= 1"),
        ])
        if not self.data and not (self.train and self.valid):
            raise ValueError("data: expected a folder of split files, or both train and "
                             "valid files")


# -- data ---------------------------------------------------------------------------------

def find_pair_files(cfg: TranslationDataConfig, split: str) -> tuple[str, str | None] | None:
    """(source file, target file) or (tsv file, None) of a split, or None if absent; a
    folder's files are found by :func:`rnnkit.tasks.common.find_split_file`."""
    explicit = {"train": cfg.train, "valid": cfg.valid}.get(split)
    if explicit:
        parts = [p.strip() for p in explicit.split(",")]
        if len(parts) > 2:
            raise ValueError(f"{split}: expected 'SRC_FILE,TGT_FILE' or one TSV, got {explicit!r}")
        return parts[0], parts[1] if len(parts) == 2 else None
    if not cfg.data:
        return None
    folder = cfg.data
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder (expected train/val/test files)")
    src = find_split_file(folder, split, "." + cfg.source_lang)
    tgt = find_split_file(folder, split, "." + cfg.target_lang)
    if src or tgt:
        if not (src and tgt):
            found = [os.path.basename(p) for p in (src, tgt) if p]
            raise ValueError(f"{folder}: expected one {split} file per language "
                             f"(*.{cfg.source_lang}, *.{cfg.target_lang}), found {found}")
        return src, tgt
    tsv = find_split_file(folder, split, ".tsv")
    if tsv is not None:
        return tsv, None
    if split != "test":
        raise ValueError(f"{folder}: no {split} files (*.{cfg.source_lang} and "
                         f"*.{cfg.target_lang}, or a .tsv)")
    return None


def read_split(cfg: TranslationDataConfig, split: str) -> list[SentencePair] | None:
    """The sentence pairs of "train", "valid" or "test" (None if there is no such file)."""
    files = find_pair_files(cfg, split)
    return None if files is None else read_parallel(*files)


def _encode(tokenizer, texts: list[str], where) -> list[list[int]]:
    """Sentences -> ids ending with ``<eos>``; one too long to read whole is refused at
    ``where(k)`` (:func:`encode_bounded`)."""
    return encode_bounded(texts, tokenizer.encode_lines, where, "a translator")


class TranslationTask:
    """The translation task for :class:`rnnkit.train.Trainer`."""

    name = TASK
    unit = "tok"
    world = SINGLE

    def __init__(self, model: Seq2Seq, train_pairs, valid_pairs, cfg: TranslationDataConfig,
                 seed: int, device, target_tokenizer=None, references=None):
        self.model, self.cfg, self.device = model, cfg, device
        self.target_tokenizer, self.references = target_tokenizer, references
        self.train_src, self.train_tgt = train_pairs
        self.valid_src, self.valid_tgt = valid_pairs
        lengths = [len(s) + len(t) for s, t in zip(self.train_src, self.train_tgt)]
        self.batches = ExampleBatches(len(self.train_src), cfg.batch_size, lengths=lengths,
                                      seed=seed, collate=self._collate_train)

    def _collate_train(self, indices):
        return collate_pairs([self.train_src[k] for k in indices],
                             [self.train_tgt[k] for k in indices])

    def _loss(self, batch, reduction="mean"):
        src, src_len, tgt_in, tgt_out = batch
        logits = self.model(src.to(self.device), src_len, tgt_in.to(self.device))
        return F.cross_entropy(logits.flatten(0, 1), tgt_out.to(self.device).flatten(),
                               ignore_index=PAD_ID, reduction=reduction)

    def train_loss(self, batch):
        return self._loss(batch), int((batch[3] != PAD_ID).sum())

    def evaluate(self, split: str) -> dict:
        share = self.world.share                      # each process scores its share
        total, count = self.world.sum(*teacher_forced_nll(
            self.model, share(self.valid_src), share(self.valid_tgt), self.device))
        return {"loss": total / count, "ppl": perplexity(total / count)}

    def describe(self, m: dict) -> str:
        return describe_metrics(m)


def collate_pairs(sources: list[list[int]], targets: list[list[int]]):
    """Id lists (each ending with ``<eos>``) -> (source (S, B), source lengths (B,),
    target inputs (T, B) = ``<eos>`` then y_1..y_{n-1}, target outputs (T, B) = y_1..y_n)."""
    src, src_len = pad(sources, PAD_ID)
    tgt_out, _ = pad(targets, PAD_ID)
    tgt_in, _ = pad([[BOS_ID] + t[:-1] for t in targets], PAD_ID)
    return src, src_len, tgt_in, tgt_out


@torch.no_grad()
def teacher_forced_nll(model: Seq2Seq, sources, targets, device, batch_size: int = 64):
    """Total NLL (nats) and count of target tokens (``<eos>`` included), teacher forced."""
    model.eval()
    total, count = 0.0, 0
    lengths = [max(len(s), len(t)) for s, t in zip(sources, targets)]
    for chunk in length_batches(lengths, batch_size, logits_tokens(model.output.out_features)):
        src, src_len, tgt_in, tgt_out = collate_pairs([sources[i] for i in chunk],
                                                      [targets[i] for i in chunk])
        logits = model(src.to(device), src_len, tgt_in.to(device))
        total += F.cross_entropy(logits.flatten(0, 1).double(), tgt_out.to(device).flatten(),
                                 ignore_index=PAD_ID, reduction="sum").item()
        count += int((tgt_out != PAD_ID).sum())
    return total, count


def describe_metrics(m: dict) -> str:
    """One line: "loss 1.8781, ppl 6.54[, BLEU 38.44, chrF 57.55]"."""
    s = f"loss {m['loss']:.4f}, ppl {m['ppl']:.2f}"
    if "bleu" in m:
        s += f", BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f}"
    return s


# -- training -----------------------------------------------------------------------------

def _paired_ids(pairs, src_tok, tgt_tok, name: str, max_length: int = 0, log=None):
    """The pairs of file(s) ``name`` as (source ids, target ids); with ``max_length``, the
    pairs longer than that on either side are skipped and counted."""
    def where(k):
        return f"{name}, line {pairs[k].line}"

    src = _encode(src_tok, [p.source for p in pairs], where)
    tgt = _encode(tgt_tok, [p.target for p in pairs], where)
    if max_length:
        keep = [k for k in range(len(src)) if len(src[k]) <= max_length
                and len(tgt[k]) <= max_length]
        if len(keep) < len(src) and log is not None:
            log(f"{name}: skipped {len(src) - len(keep)} of {len(src)} pairs longer than "
                f"{max_length} tokens (max_length)")
        if not keep:
            raise ValueError(f"{name}: every pair is longer than max_length={max_length} "
                             f"tokens on one side; raise --max-length (0 keeps all)")
        src, tgt = [src[k] for k in keep], [tgt[k] for k in keep]
    return src, tgt


def _files(cfg: TranslationDataConfig, split: str) -> str:
    return ", ".join(p for p in find_pair_files(cfg, split) if p)


def _build_tokenizer(cfg: TranslationDataConfig, texts: list[str], vocab_size: int):
    if cfg.level == "bpe":
        return build_tokenizer("bpe", texts, bpe_vocab_size=vocab_size)
    return build_tokenizer("word", texts, min_count=cfg.min_count)


def prepare(cfg: TranslationDataConfig, options: dict, out: Path, *, resume: bool,
            log) -> recipe.Prepared:
    """The pairs of a run and the vocabulary of each side (built from the training pairs,
    or loaded on resume), encoded."""
    train, valid = read_split(cfg, "train"), read_split(cfg, "valid")
    if resume:
        src_tok, tgt_tok = load_tokenizer(out / "source"), load_tokenizer(out / "target")
    else:
        log(f"building {cfg.level} vocabularies from {len(train):,} training pairs")
        src_tok = _build_tokenizer(cfg, [p.source for p in train], cfg.source_vocab_size)
        tgt_tok = _build_tokenizer(cfg, [p.target for p in train], cfg.target_vocab_size)
    train_ids = _paired_ids(train, src_tok, tgt_tok, _files(cfg, "train"), cfg.max_length,
                            log)
    valid_ids = _paired_ids(valid, src_tok, tgt_tok, _files(cfg, "valid"))
    references = [p.target for p in valid]
    return recipe.Prepared(
        sizes={"source_vocab_size": src_tok.vocab_size, "target_vocab_size": tgt_tok.vocab_size},
        files={"source": src_tok, "target": tgt_tok},
        config={"languages": [cfg.source_lang, cfg.target_lang]},
        report=f"vocabularies: source {src_tok.vocab_size}, target {tgt_tok.vocab_size}; "
               f"train {len(train_ids[0]):,} pairs, valid {len(valid_ids[0]):,}",
        make_task=lambda model, seed, device: TranslationTask(
            model, train_ids, valid_ids, cfg, seed, device, tgt_tok, references))


def describe_model(cfg: Seq2SeqConfig) -> str:
    return (f"{cfg.cell} encoder 2x{cfg.hidden_size} (bidirectional, {cfg.encoder_layers} "
            f"layer(s)), decoder {cfg.decoder_layers}x{cfg.hidden_size}, {cfg.attention} "
            f"attention")


def score_greedy_translations(task: TranslationTask, summary: dict, train_cfg, log) -> None:
    """After training, add BLEU and chrF of the best model's greedy translations of the
    validation pairs to the summary's "valid" figures."""
    if "valid" not in summary:
        return
    hyps = translate_ids(task.model, task.valid_src, task.target_tokenizer, beam=1)
    scores = bleu_chrf(hyps, task.references)
    summary["valid"].update(scores)
    log(f"best model, greedy on valid: BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}")


def train_translator(data_cfg: TranslationDataConfig | None, model_options: dict | None,
                     train_cfg: TrainConfig | dict | None, out: str | Path, **options) -> dict:
    """Train an encoder–decoder into ``out``: see :func:`rnnkit.tasks.recipe.train` for the
    arguments; ``model_options`` are :class:`Seq2SeqConfig` fields other than the vocabulary
    sizes. The summary's "valid" figures add BLEU/chrF of greedy translations."""
    return recipe.train(SPEC, data_cfg, model_options, train_cfg, out, **options)


# -- using a trained model ----------------------------------------------------------------

def load_translator(directory: str | Path, device: str | None = "cpu"):
    """(model in eval mode, source tokenizer, target tokenizer, config) of a directory."""
    directory = Path(directory)
    config = checkpoint.read_config(directory, TASK)
    src_tok, tgt_tok = load_tokenizer(directory / "source"), load_tokenizer(directory / "target")
    model = recipe.load_model(SPEC, directory, config, device,
                              {"source_vocab_size": src_tok.vocab_size,
                               "target_vocab_size": tgt_tok.vocab_size})
    return model, src_tok, tgt_tok, config


def max_output_length(source_length: int) -> int:
    """The longest translation searched for a source of this many tokens."""
    return 2 * source_length + 10


def translate_ids(model: Seq2Seq, sources: list[list[int]], tgt_tok, *, beam: int = 5,
                  length_penalty: float = 1.0, batch_size: int = 64, log=None) -> list[str]:
    """Source id lists (ending with ``<eos>``) -> translations as text. ``beam=1`` decodes
    greedily in batches; a wider beam searches each sentence with
    :func:`rnnkit.generate.beam_search` (scores divided by length ** ``length_penalty``)."""
    from rnnkit.generate import beam_search

    model.eval()
    device = model.output.weight.device
    out: list[list[int]] = []
    capped = 0
    if beam == 1:
        results: dict[int, list[int]] = {}
        for chunk in length_batches([len(s) for s in sources], batch_size):
            src, lengths = pad([sources[i] for i in chunk], PAD_ID)
            limit = max_output_length(int(lengths.max()))
            ids, _ = greedy_translate(model, src.to(device), lengths, limit, weights=False)
            for i, row in zip(chunk, ids):                  # each sentence its own limit
                own = max_output_length(len(sources[i]))
                results[i] = row[:own]
                capped += len(row) >= own
        out = [results[k] for k in range(len(sources))]
    else:
        for source in sources:
            limit = max_output_length(len(source))
            hyps = beam_search(TranslationSearch(model, source), [BOS_ID], beam_size=beam,
                               max_tokens=limit, eos_id=EOS_ID, length_penalty=length_penalty)
            ids = hyps[0][0]
            capped += ids[-1] != EOS_ID
            out.append(ids[:-1] if ids[-1] == EOS_ID else ids)
    if capped and log is not None:
        log(f"note: {capped} translation(s) reached the length limit (2 x source + 10 "
            f"tokens) and were cut there")
    return [tgt_tok.decode(ids).strip() for ids in out]


def translate_lines(directory: str | Path, lines: list[str], *, beam: int = 5,
                    length_penalty: float = 1.0, device: str | None = "cpu",
                    log=None, path: str = "") -> list[str]:
    """Translate sentences with a trained model; ``lines[k]`` is line k+1 of file ``path``
    (named when a sentence is too long to translate)."""
    model, src_tok, tgt_tok, _ = load_translator(directory, device)
    sources = _encode(src_tok, lines, lambda k: f"{path or 'sentence'}, line {k + 1}")
    return translate_ids(model, sources, tgt_tok, beam=beam, length_penalty=length_penalty,
                         log=log)


def bleu_chrf(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, default settings) of detokenized text."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    return {"bleu": bleu.corpus_score(hypotheses, [references]).score,
            "chrf": chrf.corpus_score(hypotheses, [references]).score,
            "signature": f"{bleu.get_signature()} | {chrf.get_signature()}"}


def evaluate_file(directory: str | Path, source: str, target: str | None = None, *,
                   beam: int = 5, length_penalty: float = 1.0, device: str | None = "cpu",
                   log=None) -> dict:
    """Loss/perplexity (teacher forced) and BLEU/chrF of the translations of a test set."""
    model, src_tok, tgt_tok, _ = load_translator(directory, device)
    pairs = read_parallel(source, target)
    src, tgt = _paired_ids(pairs, src_tok, tgt_tok, ", ".join(p for p in (source, target)
                                                               if p))
    total, count = teacher_forced_nll(model, src, tgt, device_of(device))
    hyps = translate_ids(model, src, tgt_tok, beam=beam, length_penalty=length_penalty,
                         log=log)
    m = {"loss": total / count, "ppl": perplexity(total / count), "sentences": len(pairs),
         "beam": beam, **bleu_chrf(hyps, [p.target for p in pairs])}
    m["file"] = str(source)
    return m


def _piece(tokenizer, i: int) -> str:
    """A token as readable text: "<eos>", or its characters with a leading space as "▁"."""
    if i == EOS_ID:
        return "<eos>"
    text = tokenizer.decode([i])
    return "▁" + text[1:] if text.startswith(" ") else text


def plot_attention(directory: str | Path, sentence: str, path: str | Path, *,
                   device: str | None = "cpu") -> str:
    """Greedy-translate one sentence and draw its attention matrix (target rows, source
    columns, subword tokens on the axes) as a PNG; returns the translation."""
    from rnnkit.plotting import new_figure, save_figure

    model, src_tok, tgt_tok, _ = load_translator(directory, device)
    ids = _encode(src_tok, [sentence], lambda k: "the sentence")[0]
    out, weights = greedy_translate(model, torch.tensor(ids)[:, None].to(device_of(device)),
                                    torch.tensor([len(ids)]), max_output_length(len(ids)))
    out_ids = out[0]
    n = len(out_ids) + 1 if len(out_ids) < weights.shape[0] else len(out_ids)
    matrix = weights[:n, 0].cpu().numpy()                             # (T, S)
    src_labels = [_piece(src_tok, i) for i in ids]
    tgt_labels = [_piece(tgt_tok, i) for i in (out_ids + [EOS_ID])[:n]]
    fig, ax = new_figure(max(4, 0.45 * len(ids) + 2), max(3, 0.4 * n + 1.5))
    ax.imshow(matrix, cmap="Greys", aspect="auto", vmin=0, vmax=1)
    ax.set_xticks(range(len(ids)), src_labels, rotation=90)
    ax.set_yticks(range(n), tgt_labels)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    text = tgt_tok.decode(out_ids).strip()
    ax.set_title(text if len(text) < 70 else text[:67] + "…", fontsize=9)
    save_figure(fig, path)
    return text


# -- the declaration ------------------------------------------------------------------------

def _evaluate(directory, path, *, reference=None, beam: int = 5, device: str = "cpu",
              log=None, **_) -> dict:
    return evaluate_file(directory, path, reference, beam=beam, device=device, log=log)


def evaluation_report(m: dict, path) -> list[str]:
    """``rnnkit eval``'s lines for the figures of :func:`evaluate_file`."""
    return [f"{path}: {describe_metrics(m)}; {m['sentences']:,} sentences, beam {m['beam']}",
            f"sacrebleu: {m['signature']}"]


SPEC = recipe.TaskSpec(
    name=TASK, summary="an encoder-decoder with attention (translation)",
    description="Train a translator of aligned sentence pairs: bidirectional encoder, "
    "attentional decoder, teacher forcing.",
    data_config=TranslationDataConfig, model_config=Seq2SeqConfig, model=Seq2Seq,
    prepare=prepare, describe_model=describe_model,
    train_defaults={"optimizer": "adam", "lr": 1e-3, "clip": 1.0, "lr_decay": 2.0,
                    "epochs": 15, "eval_every": 500},
    finish=score_greedy_translations, evaluate=_evaluate, report=evaluation_report,
    use="rnnkit translate")

"""Speech recognition with CTC (many-to-many unaligned), end to end: train, evaluate,
transcribe.

The Python API behind ``rnnkit train recognizer``, ``rnnkit eval`` and ``rnnkit
transcribe``::

    from rnnkit.tasks import recognizer
    recognizer.train_recognizer(recognizer.RecognizerDataConfig(data="speech/"),
                                {"hidden_size": 128}, {"max_minutes": 10}, out="runs/asr")
    recognizer.evaluate_file("runs/asr", "speech/test.tsv")          # WER, CER (jiwer)
    recognizer.transcribe_files("runs/asr", ["a.wav", "b.wav"], beam=8)

Data: a TSV manifest per split, ``path<TAB>transcript`` a line (a path relative to the
manifest's folder); a folder holds ``train.tsv``, ``dev.tsv`` (or ``valid.tsv``) and
optionally ``test.tsv``. The audio of a run is either WAV files (PCM, at ``--sample-rate``:
another rate is an error naming the file — rnnkit never resamples silently) of which
log-mel filterbanks are computed (kaldi-native-fbank), or precomputed ``.npy`` feature
arrays (frames, features), all of one kind. Features are normalised per utterance;
training masks them SpecAugment-style (:func:`rnnkit.data.audio.spec_augment`). A
transcript's spaces are normalised (runs of white space become one space; ends trimmed); an
empty transcript is an error naming the line.

Units (``--units``): the characters of the training transcripts (ids from 3, the space
included; :class:`rnnkit.data.tokenizers.CharTokenizer`), or byte-level BPE subwords
learnt from them (``--bpe-vocab`` ids, :class:`rnnkit.data.tokenizers.BpeTokenizer`: every
text is written, so none is ever outside), plus the CTC blank, which is id 0 (``<pad>``,
never a real unit; ids 1-2, ``<unk>`` and the line end, are never targets). A character
outside the character set in a validation or evaluation transcript is, by
``--unknown-units``: ``drop`` (the default) — dropped from
the CTC target, counted and reported, while the reference that WER and CER are measured
against keeps it (the model cannot write it: it counts as an error); or ``error`` — the run
or evaluation stops naming the file, line and characters.

A training utterance too short for its transcript (fewer output steps, after the model's
time subsampling, than its units plus its repeated neighbours, which CTC must separate by
a blank) has no CTC alignment: it is left out of training and counted. In evaluation its
loss is left out (``zero_infinity``) and it is counted as ``too_short``; its WER and CER
count as measured.

Decoding: greedy (``beam`` 1: the likeliest unit per step, repeats merged, blanks
removed), or beam search by pyctcdecode (``beam`` > 1), optionally with a word n-gram
language model (ARPA or KenLM binary, read by the kenlm module) weighted by ``lm_weight``
(pyctcdecode's alpha) with ``word_bonus`` (beta) per word. WER and CER are computed by
jiwer over the whole file (errors summed over utterances, divided by the reference words or
characters). The model kept is the one with the best validation CER (greedy; ties: lower
loss).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnkit import checkpoint
from rnnkit.data.text import iter_lines
from rnnkit.config import MAX_DECODED_BYTES, option
from rnnkit.data import load_tokenizer
from rnnkit.data.audio import FEATURE_SUFFIXES, spec_augment, utterance_features
from rnnkit.data.stream import ExampleBatches
from rnnkit.data.tokenizers import (BPE_MIN_VOCAB, BpeTokenizer, CharTokenizer,
                                    build_bpe_tokenizer, build_char_tokenizer)
from rnnkit.models.recognizer import BLANK_ID, Recognizer, RecognizerConfig, output_lengths
from rnnkit.tasks import recipe
from rnnkit.tasks.common import SplitSource, device_of, find_split_file, length_batches
from rnnkit.train import TrainConfig
from rnnkit.train.distributed import SINGLE, World

TASK = "recognizer"
UNKNOWN_POLICIES = ("drop", "error")
UNIT_KINDS = ("char", "bpe")
FIRST_UNIT = 3                   # ids 0-2 are <pad> (the blank), <unk>, "\n": never targets
MAX_TRANSCRIPT_CHARS = 10_000


@dataclass(frozen=True)
class RecognizerDataConfig(SplitSource):
    """Where the utterances come from (TSV manifests ``path<TAB>transcript``; see
    :class:`rnnkit.tasks.common.SplitSource`), their features and batching."""

    sample_rate: int = option(16000, "sample rate of the WAV files (Hz); a file at another "
                              "rate is an error")
    num_mel_bins: int = option(40, "log-mel filterbank channels computed of WAV files")
    freq_masks: int = option(2, "SpecAugment in training: frequency bands masked per "
                             "utterance")
    freq_width: int = option(6, "SpecAugment: widest frequency band masked (channels)")
    time_masks: int = option(2, "SpecAugment: spans of frames masked per utterance")
    time_width: int = option(10, "SpecAugment: longest span masked (frames; at most a fifth "
                             "of the utterance)")
    units: str = option("char", "output units: the characters of the training transcripts, "
                        "or byte-level BPE subwords learnt from them", choices=UNIT_KINDS)
    bpe_vocab: int = option(300, f"units bpe: vocabulary size (at least {BPE_MIN_VOCAB}: the "
                            f"256 bytes and 3 special ids)")
    unknown_units: str = option("drop", "a transcript character outside the unit set (not "
                                "in the training transcripts): drop it from the CTC target "
                                "and count it, or stop with an error",
                                choices=UNKNOWN_POLICIES)
    batch_size: int = option(16, "utterances per batch")

    def __post_init__(self):
        self.check_source([
            ("sample_rate", lambda c: 1000 <= c.sample_rate <= 384_000,
             "a rate in [1000, 384000] Hz"),
            ("num_mel_bins", lambda c: 1 <= c.num_mel_bins <= 256, "an int in [1, 256]"),
            ("freq_masks", lambda c: 0 <= c.freq_masks <= 100, "an int in [0, 100]"),
            ("freq_width", lambda c: c.freq_width >= 0, "an int >= 0"),
            ("time_masks", lambda c: 0 <= c.time_masks <= 100, "an int in [0, 100]"),
            ("time_width", lambda c: c.time_width >= 0, "an int >= 0"),
            ("units", lambda c: c.units in UNIT_KINDS, f"one of {list(UNIT_KINDS)}"),
            ("bpe_vocab", lambda c: BPE_MIN_VOCAB <= c.bpe_vocab <= 100_000,
             f"an int in [{BPE_MIN_VOCAB}, 100000]"),
            ("unknown_units", lambda c: c.unknown_units in UNKNOWN_POLICIES,
             f"one of {list(UNKNOWN_POLICIES)}"),
            ("batch_size", lambda c: c.batch_size >= 1, "an int >= 1"),
        ], "utterances (TSV manifests path<TAB>transcript)")


# -- reading --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Utterance:
    path: str          # the audio or feature file, resolved against the manifest's folder
    text: str          # the transcript, white space normalised
    line: int          # its line in the manifest


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """The utterances of a TSV manifest ``path<TAB>transcript``; blank lines are skipped;
    a line without a tab or with an empty transcript is an error naming the line."""
    folder = Path(path).parent
    out = []
    for k, line in enumerate(iter_lines(path), start=1):   # strict UTF-8, BOM, line numbers
        if not line.strip():
            continue
        audio, tab, transcript = line.partition("\t")
        transcript = " ".join(transcript.split())
        if not tab or not audio.strip():
            raise ValueError(f"{path}, line {k}: expected 'path<TAB>transcript'")
        if not transcript:
            raise ValueError(f"{path}, line {k}: an empty transcript")
        if len(transcript) > MAX_TRANSCRIPT_CHARS:
            raise ValueError(f"{path}, line {k}: a transcript of {len(transcript):,} "
                             f"characters; at most {MAX_TRANSCRIPT_CHARS:,}")
        audio_path = folder / audio.strip()
        if audio_path.is_dir():
            raise ValueError(f"{path}, line {k}: {audio_path} is a folder, not an audio file")
        out.append(Utterance(str(audio_path), transcript, k))
    if not out:
        raise ValueError(f"{path}: no utterances")
    return out


def manifest_sources(cfg: RecognizerDataConfig) -> tuple[str, str, str | None]:
    """(train, valid, test or None) manifests: ``--train``/``--valid``, or the ``*.tsv``
    split files of the ``--data`` folder, or one ``--data`` manifest whose last
    ``--valid-fraction`` is held out (then train and valid are the same path)."""
    if cfg.train:
        return cfg.train, cfg.valid, None
    if os.path.isdir(cfg.data):
        train = find_split_file(cfg.data, "train", ".tsv")
        if train is None:
            raise ValueError(f"{cfg.data}: no training manifest (expected train.tsv)")
        return (train, find_split_file(cfg.data, "valid", ".tsv") or train,
                find_split_file(cfg.data, "test", ".tsv"))
    if not os.path.exists(cfg.data):
        raise ValueError(f"{cfg.data}: no such file or folder")
    return cfg.data, cfg.data, None


def read_features(utterances: list[Utterance], manifest, sample_rate: int,
                  num_mel_bins: int, source: str | None = None) -> tuple[list, str]:
    """(features per utterance (T, F) float32 tensors, their source "wav" or "npy"):
    every file of the list of one kind (``source``, if given) and one feature size."""
    features, size, kept = [], None, 0
    for u in utterances:
        kind = "npy" if Path(u.path).suffix.lower() in FEATURE_SUFFIXES else "wav"
        if source is None:
            source = kind
        if kind != source:
            where = f"{manifest}, line {u.line}: " if u.line else ""
            raise ValueError(f"{where}{u.path} is a "
                             f"{'feature' if kind == 'npy' else 'WAV'} file, but "
                             f"{'this model reads' if size is None else 'the others are'} "
                             f"{'feature files (.npy)' if source == 'npy' else 'WAV files'};"
                             f" use one kind")
        try:
            f = utterance_features(u.path, sample_rate, num_mel_bins)
        except FileNotFoundError:
            where = f"{manifest}, line {u.line}: " if u.line else ""
            raise ValueError(f"{where}no such file {u.path}") from None
        if size is None:
            size = f.shape[1]
        elif f.shape[1] != size:
            raise ValueError(f"{u.path}: {f.shape[1]} features per frame, the other files "
                             f"{size}")
        kept += f.nbytes
        if kept > MAX_DECODED_BYTES:
            where = f"{manifest}, line {u.line}" if u.line else u.path
            raise ValueError(f"{where}: the features read so far take {kept / 2**30:.1f} GiB, "
                             f"more than the {MAX_DECODED_BYTES / 2**30:.0f} GiB rnnkit keeps "
                             f"in memory; train on a smaller manifest, or use fewer "
                             f"--num-mel-bins")
        features.append(torch.from_numpy(f))
    return features, source


@dataclass
class Corpus:
    """Utterances ready for the model: features, CTC targets, reference texts."""

    features: list          # (T, F) float32 tensors
    targets: list           # unit ids (characters outside the unit set dropped)
    texts: list             # the references, as written (white space normalised)
    dropped: Counter        # characters outside the unit set, with their counts

    def share(self, world: World) -> "Corpus":
        return Corpus(world.share(self.features), world.share(self.targets),
                      world.share(self.texts), self.dropped)


def encode_transcripts(utterances: list[Utterance], units, policy: str,
                       manifest) -> tuple[list, Counter]:
    """(unit ids per transcript, characters outside the unit set with counts), by the
    ``policy`` "drop" (left out of the target) or "error" (naming the line). Byte-level
    BPE units write every text: none is outside."""
    targets, dropped = [], Counter()
    for u in utterances:
        ids = units.encode(u.text, unknown_policy="unk")
        unknown = ([c for c, i in zip(u.text, ids) if i < FIRST_UNIT]
                   if units.level == "char" else [])
        if unknown and policy == "error":
            raise ValueError(f"{manifest}, line {u.line}: character(s) outside the unit set "
                             f"{''.join(sorted(set(unknown)))!r} (the model writes "
                             f"{units.vocab_size - FIRST_UNIT} characters, those of its "
                             f"training transcripts); --unknown-units drop leaves them out "
                             f"of the targets")
        dropped.update(unknown)
        targets.append([i for i in ids if i >= FIRST_UNIT])
    return targets, dropped


def corpus_of(utterances, manifest, units, *, sample_rate: int, num_mel_bins: int,
              unknown_units: str, source: str | None = None) -> tuple[Corpus, str]:
    """The utterances of a manifest read and encoded: (corpus, its source "wav" or "npy")."""
    features, source = read_features(utterances, manifest, sample_rate, num_mel_bins, source)
    targets, dropped = encode_transcripts(utterances, units, unknown_units, manifest)
    return Corpus(features, targets, [u.text for u in utterances], dropped), source


def ctc_steps_needed(target: list[int]) -> int:
    """The fewest output steps a CTC alignment of ``target`` takes: a step per unit and a
    blank between each two equal neighbours."""
    return len(target) + sum(a == b for a, b in zip(target, target[1:]))


def describe_dropped(dropped: Counter) -> str:
    if not dropped:
        return "none"
    shown = ", ".join(f"{c!r} x{n}" for c, n in dropped.most_common(8))
    return f"{sum(dropped.values())} ({shown}{', …' if len(dropped) > 8 else ''})"


# -- batches, decoding, metrics --------------------------------------------------------------

def collate(features: list, targets: list | None):
    """Utterances -> (features (T, B, F) zero-padded, lengths (B,), targets (ΣU,) concatenated
    or None, target lengths (B,) or None)."""
    lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(features)                     # (T, B, F)
    if targets is None:
        return padded, lengths, None, None
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
    return padded, lengths, flat, torch.tensor([len(t) for t in targets], dtype=torch.long)


def ctc_greedy(ids) -> list[int]:
    """Best-path decoding of one utterance's per-step argmax ids: repeats merged, then blanks
    removed (``[a, a, -, a, b, b, -] -> [a, a, b]``)."""
    out, previous = [], None
    for i in ids:
        i = int(i)
        if i != previous and i != BLANK_ID:
            out.append(i)
        previous = i
    return out


def units_text(ids, units) -> str:
    """The text of decoded unit ids (ids below the first unit, never trained, left out)."""
    return " ".join(units.decode([i for i in ids if i >= FIRST_UNIT]).split())


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus WER and CER (jiwer): edit operations summed over utterances, divided by the
    reference words (characters, spaces included)."""
    import jiwer

    words = jiwer.process_words(references, hypotheses)
    chars = jiwer.process_characters(references, hypotheses)
    return {"wer": words.wer, "cer": chars.cer,
            "words": words.hits + words.substitutions + words.deletions,
            "word_errors": words.substitutions + words.deletions + words.insertions,
            "chars": chars.hits + chars.substitutions + chars.deletions}


class BeamDecoder:
    """CTC beam search by pyctcdecode over the units (blank and id >= 3), optionally with a
    word n-gram model (``lm``: ARPA or KenLM binary). Byte-level BPE symbols are given to
    pyctcdecode in its word-piece form (``"Ġthe"`` as ``"▁the"``: a new word)."""

    def __init__(self, units, beam: int, lm: str | None = None,
                 lm_weight: float = 0.5, word_bonus: float = 1.0):
        try:
            import logging

            from pyctcdecode import build_ctcdecoder
            logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
        except ImportError:
            raise ValueError("beam: beam search needs the pyctcdecode package (pip install "
                             "'rnnkit[speech]'); use beam 1 (greedy) without it") from None
        if lm is not None and not Path(lm).is_file():
            raise ValueError(f"{lm}: no such n-gram file")
        self.columns = [BLANK_ID] + list(range(FIRST_UNIT, units.vocab_size))
        labels = [""] + [_label(units, i) for i in self.columns[1:]]
        from rnnkit.ngram import _quiet_stderr
        try:
            with _quiet_stderr():
                self.decoder = build_ctcdecoder(labels, kenlm_model_path=lm, alpha=lm_weight,
                                                beta=word_bonus)
        except (OSError, RuntimeError) as error:
            why = str(error).splitlines()[-1][-200:]
            raise ValueError(f"{lm}: not an n-gram model kenlm can read ({why})") from None
        self.beam = beam
        self.bytes = None
        if units.level == "bpe":       # pyctcdecode's words are byte-level symbols: decode them
            from tokenizers import decoders
            self.bytes = decoders.ByteLevel()

    def __call__(self, log_probs: torch.Tensor) -> str:
        """The best text of one utterance's (T', V) log-probabilities."""
        scores = log_probs[:, self.columns].double().numpy()
        words = self.decoder.decode(scores, beam_width=self.beam).split()
        if self.bytes is not None:     # "cafÃ©" -> "café": each word's bytes, as UTF-8
            return " ".join(self.bytes.decode(["Ġ" + w for w in words]).split())
        return " ".join(words)


def _label(units, i: int) -> str:
    """pyctcdecode's label of unit ``i``: the character, or the BPE piece with its word
    start "Ġ" written "▁"."""
    token = units.token(i)
    if units.level == "bpe":
        return "▁" + token[1:] if token.startswith("Ġ") else token
    return token


@torch.no_grad()
def recognize(model: Recognizer, corpus: Corpus, units, device, *, decoder=None,
              batch_size: int = 32) -> tuple[list[str], float, int, int]:
    """(hypothesis texts, total CTC loss of the targets, their units, utterances too short
    for their target) — greedy, or by ``decoder`` (a :class:`BeamDecoder`)."""
    model.eval()
    texts: list[str] = [""] * len(corpus.features)
    loss, count, short = 0.0, 0, 0
    for chunk in length_batches([len(f) for f in corpus.features], batch_size):
        targets = None if corpus.targets is None else [corpus.targets[i] for i in chunk]
        x, lengths, flat, target_lengths = collate([corpus.features[i] for i in chunk], targets)
        log_probs, steps = model(x.to(device), lengths)
        log_probs = log_probs.float().cpu()
        for b, i in enumerate(chunk):
            row = log_probs[:int(steps[b]), b]
            texts[i] = (decoder(row) if decoder is not None
                        else units_text(ctc_greedy(row.argmax(-1).tolist()), units))
        if targets is not None:
            feasible = [ctc_steps_needed(t) <= int(s) for t, s in zip(targets, steps)]
            short += feasible.count(False)
            losses = F.ctc_loss(log_probs.double(), flat, steps, target_lengths,
                                blank=BLANK_ID, reduction="none", zero_infinity=True)
            loss += float(sum(v for v, ok in zip(losses.tolist(), feasible) if ok))
            count += sum(len(t) for t, ok in zip(targets, feasible) if ok)
    return texts, loss, count, short


def evaluation(model, corpus: Corpus, units, device, world: World = SINGLE,
               decoder=None) -> dict:
    """Loss (CTC, nats per target unit), WER and CER against the references, and the
    "objective" that selects the model (CER; ties: loss)."""
    texts, loss, count, short = recognize(model, corpus.share(world), units, device,
                                          decoder=decoder)
    texts, (loss, count, short) = world.gather(texts), world.sum(loss, count, short)
    m = {"loss": loss / max(1, count), **error_rates(corpus.texts, texts),
         "too_short": int(short), "utterances": len(corpus.texts),
         "dropped_units": sum(corpus.dropped.values())}
    m["objective"] = m["cer"] + 1e-6 * m["loss"]
    return m


def describe_metrics(m: dict) -> str:
    """One line: "loss 0.31, WER 12.50%, CER 4.10%"."""
    return f"loss {m['loss']:.4f}, WER {100 * m['wer']:.2f}%, CER {100 * m['cer']:.2f}%"


class RecognizerTask:
    """The CTC recognition task for :class:`rnnkit.train.Trainer`."""

    name = TASK
    unit = "unit"                # a target unit: a character or a BPE subword
    world = SINGLE

    def __init__(self, model: Recognizer, train: Corpus, valid: Corpus, units, cfg,
                 seed: int, device):
        self.model, self.train, self.valid = model, train, valid
        self.units, self.cfg, self.device = units, cfg, device
        self.batches = ExampleBatches(len(train.features), cfg.batch_size,
                                      lengths=[len(f) for f in train.features], seed=seed,
                                      collate=self._collate)

    def _collate(self, indices):
        x, lengths, flat, target_lengths = collate([self.train.features[k] for k in indices],
                                                   [self.train.targets[k] for k in indices])
        c = self.cfg
        x = spec_augment(x, lengths, freq_masks=c.freq_masks, freq_width=c.freq_width,
                         time_masks=c.time_masks, time_width=c.time_width)
        return x, lengths, flat, target_lengths

    def train_loss(self, batch):
        x, lengths, flat, target_lengths = batch
        log_probs, steps = self.model(x.to(self.device), lengths)
        # on the CPU, as the evaluation: CTC's CUDA backward sums with atomics, in no fixed
        # order, and a resumed run would not continue exactly
        loss = F.ctc_loss(log_probs.float().cpu(), flat, steps.cpu(), target_lengths,
                          blank=BLANK_ID, reduction="sum")
        units = int(target_lengths.sum())
        return loss / units, units

    def evaluate(self, split: str) -> dict:
        return evaluation(self.model, self.valid, self.units, self.device, self.world)

    def describe(self, m: dict) -> str:
        return describe_metrics(m)


def prepare(cfg: RecognizerDataConfig, options: dict, out: Path, *, resume: bool,
            log) -> recipe.Prepared:
    """The utterances of a run: features read or computed, the unit set built from the
    training transcripts (or loaded on resume), targets encoded, utterances too short for
    their targets left out of training (and counted)."""
    train_path, valid_path, _ = manifest_sources(cfg)
    train = read_manifest(train_path)
    if train_path == valid_path:
        cut = len(train) - max(1, round(len(train) * cfg.valid_fraction))
        if cut < 1:
            raise ValueError(f"{train_path}: too few utterances ({len(train)}) to hold out a "
                             f"validation part")
        train, valid = train[:cut], train[cut:]
    else:
        valid = read_manifest(valid_path)
    texts = [u.text for u in train]
    units = (load_tokenizer(out / "units") if resume
             else build_char_tokenizer(texts) if cfg.units == "char"
             else build_bpe_tokenizer(texts, vocab_size=cfg.bpe_vocab))
    reading = {"sample_rate": cfg.sample_rate, "num_mel_bins": cfg.num_mel_bins,
               "unknown_units": cfg.unknown_units}
    train_set, source = corpus_of(train, train_path, units, **reading)
    valid_set, _ = corpus_of(valid, valid_path, units, **reading, source=source)
    model_cfg = RecognizerConfig(input_size=train_set.features[0].shape[1],
                                 num_units=units.vocab_size,
                                 **{k: v for k, v in options.items()
                                    if k not in ("input_size", "num_units")})
    keep = [k for k, (f, t) in enumerate(zip(train_set.features, train_set.targets))
            if ctc_steps_needed(t) <= int(output_lengths(torch.tensor([len(f)]), model_cfg))]
    short = len(train) - len(keep)
    if not keep:
        raise ValueError(f"{train_path}: every utterance is too short for its transcript "
                         f"after the model's time subsampling by {model_cfg.subsampling} "
                         f"(lower --frame-stack or --pyramid)")
    train_set = Corpus([train_set.features[k] for k in keep],
                       [train_set.targets[k] for k in keep],
                       [train_set.texts[k] for k in keep], train_set.dropped)
    if valid_set.dropped:
        log(f"{valid_path}: characters outside the unit set dropped from the targets (kept in "
            f"the references): {describe_dropped(valid_set.dropped)}")
    features = {"source": source, "sample_rate": cfg.sample_rate,
                "num_mel_bins": cfg.num_mel_bins, "size": model_cfg.input_size}
    frames = sum(len(f) for f in train_set.features)
    return recipe.Prepared(
        sizes={"input_size": model_cfg.input_size, "num_units": units.vocab_size},
        files={"units": units},
        config={"features": features, "units": cfg.units,
                "unknown_units": cfg.unknown_units},
        report=f"{units.vocab_size - FIRST_UNIT} units "
               f"({'characters' if cfg.units == 'char' else 'byte-level BPE'}) + blank; "
               f"{model_cfg.input_size} features per frame ({source}); train "
               f"{len(train_set.texts):,} utterances ({frames / 100 / 3600:.2f} h at 10 ms "
               f"frames; {short} too short for their transcripts left out), valid "
               f"{len(valid_set.texts):,}; valid characters outside the unit set "
               f"{describe_dropped(valid_set.dropped)}",
        make_task=lambda model, seed, device: RecognizerTask(model, train_set, valid_set,
                                                             units, cfg, seed, device))


def describe_model(cfg: RecognizerConfig) -> str:
    kind = f"bi{cfg.cell}" if cfg.bidirectional else cfg.cell
    return (f"{kind} {cfg.num_layers}x{cfg.hidden_size}, time subsampled by "
            f"{cfg.subsampling} (frame stack {cfg.frame_stack}, {cfg.pyramid} pyramidal), "
            f"CTC over {cfg.num_units} outputs")


def train_recognizer(data_cfg: RecognizerDataConfig | None, model_options: dict | None,
                     train_cfg: TrainConfig | dict | None, out: str | Path,
                     **options) -> dict:
    """Train a recogniser into ``out``: see :func:`rnnkit.tasks.recipe.train` for the
    arguments; ``model_options`` are :class:`RecognizerConfig` fields other than the sizes
    the data sets."""
    return recipe.train(SPEC, data_cfg, model_options, train_cfg, out, **options)


# -- using a trained model ----------------------------------------------------------------

def load_recognizer(directory: str | Path, device: str | None = "cpu"):
    """(model in eval mode, unit tokenizer, config)."""
    directory = Path(directory)
    config = checkpoint.read_config(directory, TASK)
    units = load_tokenizer(directory / "units")
    if not isinstance(units, (CharTokenizer, BpeTokenizer)):
        raise ValueError(f"{directory / 'units'}: expected characters or BPE units")
    features = config.get("features")
    if not isinstance(features, dict) or not {"source", "sample_rate", "num_mel_bins",
                                              "size"} <= set(features):
        raise ValueError(f"{directory / checkpoint.CONFIG}: no valid feature settings")
    model = recipe.load_model(SPEC, directory, config, device,
                              sizes={"num_units": units.vocab_size,
                                     "input_size": features["size"]})
    return model, units, config


def reading_of(config: dict, unknown_units: str | None = None) -> dict:
    """How a trained model reads a manifest: :func:`corpus_of`'s keyword arguments."""
    f = config["features"]
    policy = unknown_units or config.get("unknown_units", "drop")
    if policy not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown_units: expected one of {list(UNKNOWN_POLICIES)}, got "
                         f"{policy!r}")
    return {"sample_rate": f["sample_rate"], "num_mel_bins": f["num_mel_bins"],
            "unknown_units": policy, "source": f["source"]}


def _decoder(units, beam: int, lm, lm_weight: float, word_bonus: float):
    if not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam: expected an int >= 1, got {beam!r}")
    if lm and beam == 1:
        raise ValueError("lm: an n-gram model is used by beam search; give a beam > 1")
    return None if beam == 1 else BeamDecoder(units, beam, lm, lm_weight, word_bonus)


def evaluate_file(directory: str | Path, path: str | Path, *, beam: int = 1,
                  lm: str | None = None, lm_weight: float = 0.5, word_bonus: float = 1.0,
                  unknown_units: str | None = None, device: str | None = "cpu") -> dict:
    """Loss, WER and CER on a TSV manifest, decoded greedily (``beam`` 1) or by beam search
    (optionally with the n-gram ``lm``)."""
    model, units, config = load_recognizer(directory, device)
    decoder = _decoder(units, beam, lm, lm_weight, word_bonus)
    utterances = read_manifest(path)
    corpus, _ = corpus_of(utterances, path, units, **reading_of(config, unknown_units))
    _check_size(corpus, config, path)
    m = evaluation(model, corpus, units, device_of(device), decoder=decoder)
    del m["objective"]
    return {**m, "file": str(path), "decoding": "greedy" if beam == 1 else f"beam {beam}",
            "lm": lm, "dropped": dict(corpus.dropped)}


def _check_size(corpus: Corpus, config: dict, where) -> None:
    size = config["features"]["size"]
    if corpus.features and corpus.features[0].shape[1] != size:
        raise ValueError(f"{where}: {corpus.features[0].shape[1]} features per frame; the "
                         f"model reads {size}")


def transcribe_files(directory: str | Path, files: list, *, beam: int = 1,
                     lm: str | None = None, lm_weight: float = 0.5, word_bonus: float = 1.0,
                     device: str | None = "cpu") -> list[str]:
    """The transcript of each audio (or feature) file, in order."""
    model, units, config = load_recognizer(directory, device)
    decoder = _decoder(units, beam, lm, lm_weight, word_bonus)
    f = config["features"]
    utterances = [Utterance(str(p), "", 0) for p in files]
    for u in utterances:
        if not os.path.isfile(u.path):
            raise ValueError(f"{u.path}: no such file")
    features, _ = read_features(utterances, "transcribe", f["sample_rate"], f["num_mel_bins"],
                                f["source"])
    corpus = Corpus(features, None, [""] * len(features), Counter())
    _check_size(corpus, config, files[0])
    texts, _, _, _ = recognize(model, corpus, units, device_of(device), decoder=decoder)
    return texts


# -- the declaration ------------------------------------------------------------------------

def _evaluate(directory, path, *, beam: int = 1, ngram=None, ngram_weight=None,
              device: str = "cpu", **_) -> dict:
    return evaluate_file(directory, path, beam=beam, lm=ngram,
                         lm_weight=0.5 if ngram_weight is None or not ngram else ngram_weight,
                         device=device)


def evaluation_report(m: dict, path) -> list[str]:
    """``rnnkit eval``'s lines for the figures of :func:`evaluate_file`."""
    lm = f" with {m['lm']}" if m.get("lm") else ""
    lines = [f"{path}: WER {100 * m['wer']:.2f}% of {m['words']:,} words, CER "
             f"{100 * m['cer']:.2f}% of {m['chars']:,} characters ({m['decoding']}{lm}); "
             f"CTC loss {m['loss']:.4f} per unit; {m['utterances']:,} utterances"]
    if m["too_short"]:
        lines.append(f"{m['too_short']} utterance(s) too short for their transcripts (loss "
                     f"left out)")
    if m["dropped_units"]:
        lines.append(f"characters outside the unit set (dropped from the targets, kept in the "
                     f"references): {describe_dropped(Counter(m['dropped']))}")
    return lines


SPEC = recipe.TaskSpec(
    name=TASK, summary="a CTC speech recogniser (many-to-many unaligned)",
    description="Train a speech recogniser of WAV files (or .npy feature files) listed with "
    "their transcripts in TSV manifests 'path<TAB>transcript': log-mel filterbanks, "
    "per-utterance normalisation, SpecAugment; a deep bidirectional recurrent stack with "
    "time subsampling (frame stacking, pyramidal steps), CTC over characters or BPE units.",
    data_config=RecognizerDataConfig, model_config=RecognizerConfig, model=Recognizer,
    prepare=prepare, describe_model=describe_model,
    train_defaults={"optimizer": "adam", "lr": 2e-3, "clip": 5.0, "lr_decay": 2.0,
                    "epochs": 30},
    evaluate=_evaluate, report=evaluation_report,
    use="rnnkit transcribe")



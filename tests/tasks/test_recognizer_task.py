"""Speech recognition with CTC end to end on tiny "speech" the tests make themselves — each
letter a tone of its own frequency, written as WAV files with the standard library (no
espeak): train, resume, evaluate (WER, CER), transcribe, bad input
(rnnkit.tasks.recognizer, rnnkit transcribe)."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit import checkpoint
from rnnkit.tasks import recognizer
from rnnkit.train import TrainConfig
from conftest import expect_cli_error, run_cli, train_losses

pytest.importorskip("kaldi_native_fbank")

RATE = 8000
TONES = {"a": 300.0, "b": 650.0, "c": 1200.0, "d": 2100.0}
MODEL = {"cell": "lstm", "hidden_size": 24, "num_layers": 2, "frame_stack": 2, "pyramid": 1,
         "dropout": 0.0}


# ---------------------------------------------------------------- tiny speech

def tone_samples(text: str, rng: random.Random, rate: int = RATE) -> np.ndarray:
    """The signal of ``text`` (letters of TONES and spaces) in [-1, 1]: each letter a tone
    and its harmonic, letters parted by a short silence, words by a longer one."""
    pieces = [np.zeros(int(0.05 * rate))]
    for ch in text:
        if ch == " ":
            pieces.append(np.zeros(int(rng.uniform(0.06, 0.1) * rate)))
            continue
        t = np.arange(int(rng.uniform(0.08, 0.12) * rate)) / rate
        f = TONES[ch] * rng.uniform(0.97, 1.03)
        envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
        pieces += [envelope * (0.5 * np.sin(2 * np.pi * f * t)
                               + 0.2 * np.sin(4 * np.pi * f * t)),
                   np.zeros(int(0.03 * rate))]
    pieces.append(np.zeros(int(0.05 * rate)))
    x = np.concatenate(pieces)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 0.01, len(x))
    return np.clip(x + noise, -1, 1)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = np.repeat(samples, channels) if channels > 1 else samples
        w.writeframes((frames * 32767).astype("<i2").tobytes())
    return path


def random_texts(n: int, rng: random.Random, letters: str = "abcd") -> list[str]:
    return [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 3)))
                     for _ in range(rng.randint(1, 3))) for _ in range(n)]


def tone_corpus(folder: Path, splits: dict[str, int], seed: int = 0,
                letters: str = "abcd") -> Path:
    """``folder``/{split}.tsv and ``folder``/wav/*.wav for ``splits`` {"train": n, …}."""
    rng = random.Random(seed)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    for split, n in splits.items():
        rows = []
        for k, text in enumerate(random_texts(n, rng, letters)):
            name = f"wav/{split}-{k:03d}.wav"
            write_wav(folder / name, tone_samples(text, rng))
            rows.append(f"{name}\t{text}\n")
        (folder / f"{split}.tsv").write_text("".join(rows), encoding="utf-8")
    return folder


def data_config(folder, **kw):
    return recognizer.RecognizerDataConfig(data=str(folder), sample_rate=RATE,
                                           num_mel_bins=20, batch_size=8, freq_width=3,
                                           time_width=4, **kw)


def _train(data_cfg, out, model=None, **train):
    cfg = TrainConfig(**{"epochs": 20, "lr": 0.01, "optimizer": "adam", "log_every": 4,
                         "progress": False, **train})
    return recognizer.train_recognizer(data_cfg, model or MODEL, cfg, out,
                                       log=lambda *_: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tone_corpus(tmp_path_factory.mktemp("tones"), {"train": 48, "dev": 12, "test": 12})


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "asr"
    return out, _train(data_config(data), out)


# ---------------------------------------------------------------- decoding and metrics

def test_ctc_greedy_against_a_hand_example():
    blank = recognizer.BLANK_ID
    a, b = 3, 4
    # a a - a b b - - b : repeats merge, a blank parts two a's and two b's
    assert recognizer.ctc_greedy([a, a, blank, a, b, b, blank, blank, b]) == [a, a, b, b]
    assert recognizer.ctc_greedy([blank, blank]) == []
    assert recognizer.ctc_greedy([]) == []


def test_greedy_decoding_of_log_probabilities_by_hand(trained):
    out, _ = trained
    _, units, _ = recognizer.load_recognizer(out)
    ids = {c: units.encode(c)[0] for c in "ab "}
    path = [0, ids["a"], ids["a"], 0, ids["a"], ids[" "], ids["b"], 0, 0]   # per step
    log_probs = torch.full((len(path), units.vocab_size), -10.0)
    log_probs[torch.arange(len(path)), path] = -0.01
    best = log_probs.argmax(-1).tolist()
    assert recognizer.units_text(recognizer.ctc_greedy(best), units) == "aa b"


def test_error_rates_against_a_hand_computation():
    refs = ["the cat sat", "on a mat"]
    hyps = ["the bat sat down", "on mat"]
    m = recognizer.error_rates(refs, hyps)
    # words: cat->bat (S), +down (I) | -a (D): 3 errors of 6 reference words
    assert m["wer"] == 3 / 6 and m["words"] == 6 and m["word_errors"] == 3
    # characters (spaces count): c->b, +" down" (5) | -"a " (2): 8 of 11 + 8
    assert m["cer"] == pytest.approx(8 / 19) and m["chars"] == 19


def test_ctc_steps_needed_counts_a_blank_between_equal_neighbours():
    assert recognizer.ctc_steps_needed([3, 3, 4, 4, 4, 5]) == 6 + 3
    assert recognizer.ctc_steps_needed([]) == 0


# ---------------------------------------------------------------- training

def test_training_lowers_the_loss_and_learns_the_tones(trained):
    out, summary = trained
    losses = [loss for _, loss in train_losses(out)]
    assert losses[-1] < 0.5 * losses[0]
    assert summary["valid"]["cer"] < 0.25          # 6% here after 120 steps


def test_evaluate_file_agrees_with_transcribe_and_jiwer(trained, data):
    import jiwer

    out, summary = trained
    m = recognizer.evaluate_file(out, data / "test.tsv")
    rows = [line.split("\t") for line in (data / "test.tsv").read_text().splitlines()]
    texts = recognizer.transcribe_files(out, [data / p for p, _ in rows])
    refs = [t for _, t in rows]
    assert m["wer"] == jiwer.wer(refs, texts) and m["cer"] == jiwer.cer(refs, texts)
    assert m["utterances"] == 12 and m["decoding"] == "greedy"
    # the dev split evaluated from its file gives the figures of the training summary
    again = recognizer.evaluate_file(out, data / "dev.tsv")
    assert again["cer"] == summary["valid"]["cer"]
    assert again["loss"] == pytest.approx(summary["valid"]["loss"], rel=1e-6)


def test_eval_loss_is_the_ctc_loss_of_each_utterance_alone(trained, data):
    out, _ = trained
    model, units, config = recognizer.load_recognizer(out)
    utterances = recognizer.read_manifest(data / "test.tsv")
    corpus, _ = recognizer.corpus_of(utterances, "test", units, **recognizer.reading_of(config))
    total = count = 0.0
    with torch.no_grad():
        for f, t in zip(corpus.features, corpus.targets):
            log_probs, steps = model(f[:, None], torch.tensor([len(f)]))
            total += torch.nn.functional.ctc_loss(
                log_probs.double(), torch.tensor([t]), steps, torch.tensor([len(t)]),
                reduction="sum").item()
            count += len(t)
    m = recognizer.evaluate_file(out, data / "test.tsv")
    assert m["too_short"] == 0
    assert m["loss"] == pytest.approx(total / count, rel=1e-5)


def test_resume_is_bit_exact(data, tmp_path):
    cfg = data_config(data)                                  # 6 batches per epoch
    model = {**MODEL, "dropout": 0.2}                        # SpecAugment and dropout draw
    _train(cfg, tmp_path / "a", model, max_steps=10, eval_every=5, log_every=2)
    _train(cfg, tmp_path / "b", model, max_steps=5, eval_every=5, log_every=2)
    recognizer.train_recognizer(None, None, None, tmp_path / "b", resume=True,
                                train_overrides={"max_steps": 10}, log=lambda *_: None)
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert [s for s, _ in a] == [s for s, _ in b] and a[-1][0] == 10
    assert a == b                                            # same floats, bit for bit
    state_a, meta_a = checkpoint.load_tensors(tmp_path / "a" / checkpoint.TRAIN_STATE)
    state_b, meta_b = checkpoint.load_tensors(tmp_path / "b" / checkpoint.TRAIN_STATE)
    assert sorted(state_a) == sorted(state_b)
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert meta_a["batches"] == meta_b["batches"]


def test_features_files_train_like_the_wav_files(data, tmp_path):
    """Precomputed .npy features (here: the filterbanks of the WAV files) train a model."""
    from rnnkit.data import audio

    folder = tmp_path / "npy"
    folder.mkdir()
    for split in ("train", "dev"):
        rows = []
        for line in (data / f"{split}.tsv").read_text().splitlines():
            path, text = line.split("\t")
            samples, rate = audio.read_wav(data / path)
            name = Path(path).stem + ".npy"
            np.save(folder / name, audio.log_mel(samples, rate, 12))
            rows.append(f"{name}\t{text}\n")
        (folder / f"{split}.tsv").write_text("".join(rows))
    summary = _train(recognizer.RecognizerDataConfig(data=str(folder), batch_size=8),
                     tmp_path / "run", max_steps=3)
    assert summary["step"] == 3
    model, _, config = recognizer.load_recognizer(tmp_path / "run")
    assert config["features"]["source"] == "npy" and model.config.input_size == 12
    texts = recognizer.transcribe_files(tmp_path / "run", [folder / "train-000.npy"])
    assert len(texts) == 1
    with pytest.raises(ValueError, match="feature files"):           # a WAV to an npy model
        recognizer.transcribe_files(tmp_path / "run", [data / "wav" / "train-000.wav"])


# ---------------------------------------------------------------- beam search

def test_beam_search_finds_the_best_path_and_the_lm_changes_it(trained, tmp_path):
    pytest.importorskip("pyctcdecode")
    out, _ = trained
    _, units, _ = recognizer.load_recognizer(out)
    ids = {c: units.encode(c)[0] for c in "abcd "}
    ids["-"] = recognizer.BLANK_ID
    # per step the likeliest unit, then two ambiguous steps: c (0.55) or d (0.44)
    steps = [("a", 0.9), ("-", 0.9), ("a", 0.9), (" ", 0.9), ("c", 0.55), ("c", 0.55)]
    log_probs = torch.full((len(steps), units.vocab_size), 1e-4)
    for t, (c, p) in enumerate(steps):
        log_probs[t, ids[c]] = p
    log_probs[4:, ids["d"]] = 0.44
    log_probs = (log_probs / log_probs.sum(-1, keepdim=True)).log()
    decoder = recognizer.BeamDecoder(units, beam=8)
    assert decoder(log_probs) == "aa c"
    greedy = recognizer.units_text(recognizer.ctc_greedy(log_probs.argmax(-1).tolist()), units)
    assert greedy == "aa c"
    pytest.importorskip("kenlm")
    arpa = tmp_path / "lm.arpa"                       # a bigram model that knows "aa d"
    arpa.write_text("\\data\\\nngram 1=5\nngram 2=2\n\n\\1-grams:\n-1.0\t<unk>\t0\n"
                    "-0.3\t<s>\t-0.3\n-0.3\t</s>\t0\n-0.3\taa\t-0.3\n-0.3\td\t-0.3\n\n"
                    "\\2-grams:\n-0.1\t<s> aa\n-0.1\taa d\n\n\\end\\\n")
    with_lm = recognizer.BeamDecoder(units, beam=8, lm=str(arpa), lm_weight=2.0)
    assert with_lm(log_probs) == "aa d"


def test_eval_with_beam_search(trained, data, capsys):
    pytest.importorskip("pyctcdecode")
    out, _ = trained
    code, text, err = run_cli(["eval", out, "--data", data / "test.tsv", "--beam", "4"],
                              capsys)
    assert code == 0, err
    assert "WER" in text and "CER" in text and "(beam 4)" in text


# ---------------------------------------------------------------- the command line

def test_cli_train_eval_transcribe(data, tmp_path, capsys):
    out = tmp_path / "cli"
    code, _, err = run_cli(["train", "recognizer", "--data", data, "--out", out,
                            "--sample-rate", RATE, "--num-mel-bins", 16, "--hidden", 8,
                            "--layers", 2, "--max-steps", 2, "--no-progress"], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and (out / "units" / "tokenizer.json").is_file()
    assert not list(out.glob("*.pt")) and not list(out.glob("*.pkl"))
    code, text, err = run_cli(["eval", out, "--data", data / "test.tsv", "--beam", 1], capsys)
    assert code == 0, err
    assert text.startswith(f"{data / 'test.tsv'}: WER ") and "(greedy)" in text
    files = [data / "wav" / "test-000.wav", data / "wav" / "test-001.wav"]
    code, text, err = run_cli(["transcribe", out, *files], capsys)
    assert code == 0, err
    assert [line.split("\t")[0] for line in text.splitlines()] == [str(f) for f in files]


# ---------------------------------------------------------------- bad input

def test_audio_that_does_not_decode_is_named(trained, data, tmp_path, capsys):
    out, _ = trained
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    expect_cli_error(["transcribe", out, bad], capsys, str(bad), "not a WAV file")
    text = tmp_path / "text.wav"
    text.write_text("hello")
    expect_cli_error(["transcribe", out, text], capsys, str(text), "not a WAV file")
    expect_cli_error(["transcribe", out, tmp_path / "absent.wav"], capsys, "absent.wav",
                     "no such file")


def test_a_bad_file_refuses_the_start_and_writes_nothing(data, tmp_path, capsys):
    folder = tmp_path / "corpus"
    shutil.copytree(data, folder)
    (folder / "wav" / "train-007.wav").write_bytes(b"not audio at all")
    out = tmp_path / "runs" / "new"
    expect_cli_error(["train", "recognizer", "--data", folder, "--out", out, "--sample-rate",
                      RATE, "--max-steps", 1], capsys, "train-007.wav", "not a WAV file")
    assert not out.exists() and not (tmp_path / "runs").exists()      # nothing half-written


def test_another_sample_rate_is_a_clear_error(trained, tmp_path, capsys):
    out, _ = trained
    f = write_wav(tmp_path / "fast.wav", tone_samples("ab", random.Random(0), 16000), 16000)
    expect_cli_error(["transcribe", out, f], capsys, str(f), "sample rate 16000 Hz",
                     f"computed at {RATE} Hz", "resample")


def test_stereo_and_8_bit_wav_decode(tmp_path):
    from rnnkit.data import audio

    x = tone_samples("ab", random.Random(1))
    mono, rate = audio.read_wav(write_wav(tmp_path / "mono.wav", x))
    stereo, _ = audio.read_wav(write_wav(tmp_path / "stereo.wav", x, channels=2))
    assert rate == RATE and np.array_equal(mono, stereo)
    with wave.open(str(tmp_path / "u8.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(RATE)
        w.writeframes(np.round(x * 127 + 128).astype(np.uint8).tobytes())
    u8, _ = audio.read_wav(tmp_path / "u8.wav")
    assert np.abs(u8 - mono).max() < 0.01


def test_unknown_characters_are_dropped_and_counted_or_refused(trained, data, tmp_path,
                                                               capsys):
    out, _ = trained
    rows = (data / "test.tsv").read_text().splitlines()
    path0, text0 = rows[0].split("\t")
    manifest = tmp_path / "odd.tsv"
    manifest.write_text(f"{data / path0}\t{text0}é\n" + "".join(
        f"{data / p}\t{t}\n" for p, t in (r.split("\t") for r in rows[1:3])) +
        f"{data / path0}\t{text0}xéx\n")
    m = recognizer.evaluate_file(out, manifest)
    assert m["dropped_units"] == 4 and m["dropped"] == {"é": 2, "x": 2}
    assert m["chars"] == sum(len(r.split("\t")[1]) for r in rows[:3]) + len(text0) + 4
    code, text, _ = run_cli(["eval", out, "--data", manifest, "--beam", 1], capsys)
    assert code == 0 and "'é' x2, 'x' x2" in text
    with pytest.raises(ValueError, match=r"odd.tsv, line 1: character\(s\) outside the unit "
                                         r"set 'é'"):
        recognizer.evaluate_file(out, manifest, unknown_units="error")


def test_unknown_characters_in_valid_with_error_policy_refuse_the_start(data, tmp_path,
                                                                        capsys):
    folder = tmp_path / "corpus"
    shutil.copytree(data, folder)
    dev = (folder / "dev.tsv").read_text().splitlines()
    dev[2] += "z"
    (folder / "dev.tsv").write_text("\n".join(dev) + "\n")
    out = tmp_path / "run"
    expect_cli_error(["train", "recognizer", "--data", folder, "--out", out, "--sample-rate",
                      RATE, "--unknown-units", "error", "--max-steps", 1], capsys,
                     "dev.tsv, line 3", "'z'")
    assert not out.exists()


def test_manifest_errors_name_the_line(tmp_path):
    f = tmp_path / "m.tsv"
    f.write_text("a.wav\tab\n\nb.wav\n")
    with pytest.raises(ValueError, match=r"m.tsv, line 3: expected 'path<TAB>transcript'"):
        recognizer.read_manifest(f)
    f.write_text("a.wav\t   \n")
    with pytest.raises(ValueError, match="line 1: an empty transcript"):
        recognizer.read_manifest(f)


def test_feature_files_are_data_with_checked_sizes(tmp_path):
    from rnnkit.data import audio

    pickled = tmp_path / "p.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="expected a 2-D float array"):
        audio.read_features(pickled)
    huge = tmp_path / "huge.npy"                       # a header claiming 10^9 frames
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 9, 40)})
    with pytest.raises(ValueError, match="at most 60,000 frames"):
        audio.read_features(huge)
    short = tmp_path / "short.npy"                     # the header says more than there is
    np.save(short, np.zeros((50, 4), np.float32))
    short.write_bytes(short.read_bytes()[:-100])
    with pytest.raises(ValueError, match="short.npy"):
        audio.read_features(short)


# ---------------------------------------------------------------- espeak-ng (optional)

@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                    reason="espeak-ng and sox are not installed")
def test_espeak_corpus_trains(tmp_path):
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(root / "benchmarks" / "speech_data.py"), "--out",
                    str(tmp_path / "spoken"), "--train", "6", "--dev", "2", "--test", "2"],
                   check=True, capture_output=True)
    with wave.open(str(tmp_path / "spoken" / "wav" / "test-00000.wav")) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
    summary = _train(recognizer.RecognizerDataConfig(data=str(tmp_path / "spoken"),
                                                     batch_size=3),
                     tmp_path / "run", {**MODEL, "hidden_size": 8}, max_steps=2)
    assert summary["step"] == 2


def test_decoding_options_are_checked(trained, data, tmp_path, capsys):
    out, _ = trained
    wav = data / "wav" / "test-000.wav"
    expect_cli_error(["transcribe", out, wav, "--lm", tmp_path / "lm.arpa"], capsys,
                     "--lm", "beam > 1")
    expect_cli_error(["transcribe", out, wav, "--beam", 0], capsys, "beam", ">= 1")
    expect_cli_error(["transcribe", out, wav, "--lm-weight", 1], capsys, "only with --lm")
    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    broken = tmp_path / "broken.arpa"
    broken.write_text("\\data\\\nngram 1=what\n")
    expect_cli_error(["transcribe", out, wav, "--beam", 4, "--lm", broken], capsys,
                     str(broken), "not an n-gram model")
    expect_cli_error(["transcribe", out, wav, "--beam", 4, "--lm", tmp_path / "none.arpa"],
                     capsys, "none.arpa", "no such")


def test_bpe_units_train_decode_and_beam_search(data, tmp_path):
    out = tmp_path / "bpe"
    summary = _train(data_config(data, units="bpe", bpe_vocab=262), out, max_steps=3)
    assert summary["step"] == 3
    model, units, config = recognizer.load_recognizer(out)
    assert units.level == "bpe" and config["units"] == "bpe"
    assert model.config.num_units == units.vocab_size == 262
    ids = units.encode("ab cd")
    assert recognizer.units_text(recognizer.ctc_greedy(ids), units) == "ab cd"
    pytest.importorskip("pyctcdecode")
    log_probs = torch.full((len(ids), units.vocab_size), -12.0)
    log_probs[torch.arange(len(ids)), ids] = -0.01
    assert recognizer.BeamDecoder(units, beam=4)(log_probs) == "ab cd"
    m = recognizer.evaluate_file(out, data / "test.tsv", beam=4)
    utterances = recognizer.read_manifest(data / "test.tsv")
    hypotheses = recognizer.transcribe_files(out, [u.path for u in utterances], beam=4)
    expected = recognizer.error_rates([u.text for u in utterances], hypotheses)
    assert m["cer"] == pytest.approx(expected["cer"]) and m["dropped_units"] == 0


def test_beam_search_without_pyctcdecode_says_what_to_do(trained, data, monkeypatch, capsys):
    out, _ = trained
    monkeypatch.setitem(sys.modules, "pyctcdecode", None)          # import fails
    expect_cli_error(["eval", out, "--data", data / "test.tsv", "--beam", 5], capsys,
                     "needs the pyctcdecode package", "beam 1")
    code, text, err = run_cli(["eval", out, "--data", data / "test.tsv"], capsys)
    assert code == 0 and "(greedy)" in text, err                  # the recognizer's default
    expect_cli_error(["predict", out, data / "test.tsv"], capsys, "rnnkit transcribe")

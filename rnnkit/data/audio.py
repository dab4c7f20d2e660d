"""Audio for speech recognition: WAV files and feature files in, log-mel filterbanks out.

- :func:`read_wav` reads a PCM WAV file with the standard library's ``wave`` module (8, 16,
  24 or 32-bit integer samples; several channels are averaged) as float32 samples in
  [-1, 1]. The header's sizes are checked before anything is read: a file of more than
  ``MAX_AUDIO_SECONDS`` seconds is refused, as is a file that does not decode (the message
  names the file).
- :func:`log_mel` computes Kaldi-compatible log-mel filterbanks (25 ms windows every 10 ms,
  no dither, so the same file always gives the same features) with the maintained
  ``kaldi-native-fbank`` library.
- :func:`read_features` reads a precomputed feature file: a NumPy ``.npy`` array
  ``(frames, features)`` of floats, read with ``allow_pickle=False`` (data, never code),
  its header checked against ``MAX_FEATURE_FRAMES`` and ``MAX_FEATURE_SIZE`` before the
  array is allocated.
- :func:`normalize` is per-utterance mean and variance normalisation (each feature
  dimension to mean 0 and variance 1 over the utterance's frames).
- :func:`spec_augment` masks random bands of frequencies and spans of frames (Park et al.
  2019, without time warping), drawing from PyTorch's global generator, so that a resumed
  run draws the masks an unbroken run would.

Sample rates: a WAV file must have the rate the features are computed at (the data config's
``sample_rate``, 16 kHz by default); another rate is an error naming the file, its rate and
a command that resamples it (``sox in.wav -r 16000 out.wav``) — rnnkit never resamples
silently.
"""

from __future__ import annotations

import os
import struct
import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: The longest audio one file may hold (seconds) and the largest feature file
#: (frames x features) rnnkit reads: an utterance is read whole, so a longer one is
#: refused (split it) before anything is allocated.
MAX_AUDIO_SECONDS = 600
MAX_FEATURE_FRAMES = 100 * MAX_AUDIO_SECONDS
MAX_FEATURE_SIZE = 1024
AUDIO_SUFFIXES = (".wav",)
FEATURE_SUFFIXES = (".npy",)
FRAME_SHIFT_MS, FRAME_LENGTH_MS = 10.0, 25.0

_WIDTH_DTYPES = {1: np.uint8, 2: np.int16, 4: np.int32}


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples (N,) float32 in [-1, 1], sample rate) of a PCM WAV file; ``ValueError``
    naming the file for one that does not decode or holds more than MAX_AUDIO_SECONDS."""
    try:
        with wave.open(os.fspath(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.getnframes()
            if rate <= 0 or channels <= 0 or width not in (1, 2, 3, 4):
                raise wave.Error(f"{channels} channel(s) of {width} bytes at {rate} Hz")
            if frames > MAX_AUDIO_SECONDS * rate:
                raise ValueError(f"{path}: {frames / rate:,.0f} seconds of audio; rnnkit reads "
                                 f"an utterance whole, at most {MAX_AUDIO_SECONDS} seconds: "
                                 f"split it")
            data = w.readframes(frames)
    except (wave.Error, EOFError, RuntimeError, struct.error) as error:
        why = f" ({error})" if str(error) else ""
        raise ValueError(f"{path}: not a WAV file rnnkit can decode{why}; expected "
                         "uncompressed PCM (8, 16, 24 or 32-bit)") from None
    usable = len(data) // (width * channels) * width * channels
    if usable == 0:
        raise ValueError(f"{path}: a WAV file without samples")
    raw = np.frombuffer(data[:usable], dtype=np.uint8)
    if width == 3:                                       # 24-bit: widen to 32 bits
        raw = np.concatenate([np.zeros((len(raw) // 3, 1), np.uint8),
                              raw.reshape(-1, 3)], axis=1).reshape(-1)
        width = 4
    samples = raw.view(np.dtype(_WIDTH_DTYPES[width]).newbyteorder("<")).astype(np.float32)
    if width == 1:                                       # 8-bit WAV is unsigned
        samples -= 128.0
    samples /= float(2 ** (8 * width - 1))
    return samples.reshape(-1, channels).mean(axis=1), rate


def check_rate(path, rate: int, expected: int) -> None:
    """Refuse audio whose sample rate is not the one the features are computed at."""
    if rate != expected:
        raise ValueError(f"{path}: sample rate {rate} Hz, but the features are computed at "
                         f"{expected} Hz; resample the file first (for example 'sox "
                         f"{Path(path).name} -r {expected} out.wav'), or train with "
                         f"--sample-rate {rate}")


def log_mel(samples: np.ndarray, rate: int, num_mel_bins: int) -> np.ndarray:
    """Log-mel filterbanks (frames, num_mel_bins) float32 of mono samples in [-1, 1]
    (scaled to the 16-bit range, as Kaldi reads audio), by kaldi-native-fbank."""
    try:
        import kaldi_native_fbank as knf
    except ImportError:
        raise ValueError("features: computing filterbanks of WAV files needs the "
                         "kaldi-native-fbank package (pip install kaldi-native-fbank), or "
                         "give precomputed .npy feature files") from None
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(rate)
    opts.frame_opts.dither = 0.0
    opts.frame_opts.frame_shift_ms = FRAME_SHIFT_MS
    opts.frame_opts.frame_length_ms = FRAME_LENGTH_MS
    opts.mel_opts.num_bins = num_mel_bins
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(float(rate), (samples * 32768.0).astype(np.float32))
    fbank.input_finished()
    n = fbank.num_frames_ready
    if n == 0:
        return np.zeros((0, num_mel_bins), np.float32)
    return np.stack([fbank.get_frame(i) for i in range(n)]).astype(np.float32)


def read_features(path: str | os.PathLike) -> np.ndarray:
    """A precomputed feature file: a ``.npy`` float array (frames, features), its header
    checked before the array is read; never unpickles."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            if dtype.kind != "f" or dtype.hasobject or len(shape) != 2:
                raise ValueError(f"{path}: expected a 2-D float array (frames, features), "
                                 f"got shape {shape} of {dtype}")
            if not (1 <= shape[0] <= MAX_FEATURE_FRAMES and 1 <= shape[1] <= MAX_FEATURE_SIZE):
                raise ValueError(f"{path}: a feature array of shape {shape}; rnnkit reads at "
                                 f"most {MAX_FEATURE_FRAMES:,} frames of at most "
                                 f"{MAX_FEATURE_SIZE} features (at least 1 of each)")
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        if str(error).startswith(path):
            raise
        raise ValueError(f"{path}: not a NumPy feature file rnnkit can read ({error})") from None
    except EOFError:
        raise ValueError(f"{path}: a truncated NumPy feature file") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: the features hold NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def normalize(features: np.ndarray) -> np.ndarray:
    """Per-utterance normalisation: each dimension to mean 0, variance 1 over the frames (a
    dimension that hardly varies, standard deviation below 1e-3, is only centred)."""
    x = features.astype(np.float64)
    mean, std = x.mean(axis=0, keepdims=True), x.std(axis=0, keepdims=True)
    return ((x - mean) / np.where(std < 1e-3, 1.0, std)).astype(np.float32)


def utterance_features(path: str | os.PathLike, sample_rate: int,
                       num_mel_bins: int) -> np.ndarray:
    """The normalised features (frames, features) of one utterance: log-mel filterbanks
    of a WAV file (which must have ``sample_rate``), or the array of a ``.npy`` feature
    file; ``ValueError`` naming the file for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in AUDIO_SUFFIXES:
        samples, rate = read_wav(path)
        check_rate(path, rate, sample_rate)
        features = log_mel(samples, rate, num_mel_bins)
        if len(features) == 0:
            raise ValueError(f"{path}: too short for one {FRAME_LENGTH_MS:g} ms frame")
    elif suffix in FEATURE_SUFFIXES:
        features = read_features(path)
    else:
        raise ValueError(f"{path}: expected a WAV file (.wav) or a feature file (.npy)")
    return normalize(features)


def spec_augment(features: Tensor, lengths: Tensor, *, freq_masks: int, freq_width: int,
                 time_masks: int, time_width: int) -> Tensor:
    """SpecAugment masking of a padded batch (T, B, F): per utterance, ``freq_masks``
    bands of up to ``freq_width`` features and ``time_masks`` spans of up to
    ``time_width`` frames (within its length) set to 0 (the normalised mean). Draws from
    PyTorch's global generator."""
    T, B, F = features.shape
    if not (freq_masks or time_masks):
        return features
    out = features.clone()
    for b in range(B):
        n = int(lengths[b])
        for _ in range(freq_masks):
            width = int(torch.randint(0, freq_width + 1, ()))
            start = int(torch.randint(0, max(1, F - width + 1), ()))
            out[:n, b, start:start + width] = 0.0
        for _ in range(time_masks):
            width = min(int(torch.randint(0, time_width + 1, ())), n // 5)
            start = int(torch.randint(0, max(1, n - width + 1), ()))
            out[start:start + width, b] = 0.0
    return out

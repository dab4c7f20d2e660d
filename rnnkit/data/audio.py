"""Audio for speech recognition: WAV files and feature files in, log-mel filterbanks out.

- :func:`read_wav` reads an uncompressed WAV file (its RIFF chunks parsed here, not by the
  standard library's ``wave`` module, which refuses WAVE_FORMAT_EXTENSIBLE and float files):
  8, 16, 24 or 32-bit integer PCM or 32/64-bit IEEE float, plain or WAVE_FORMAT_EXTENSIBLE
  (what ``sox -b 24``, ``-b 32`` or ``-c 3`` writes); several channels are averaged; float32
  samples in [-1, 1]. The header is checked before any sample is read: the format, the
  sample rate (against the features' rate, in :func:`utterance_features`), the size of the
  data (frames x channels x bytes, at most ``MAX_AUDIO_SECONDS`` seconds, and no more than
  the file holds). A file that does not decode, is truncated or too long is refused with a
  ``ValueError`` naming the file.
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

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
#: WAVE_FORMAT_EXTENSIBLE subformat GUIDs are the format tag (2 bytes, little-endian)
#: followed by these 14 bytes (KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT).
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
_FORMAT_NAMES = {0x0002: "MS ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM",
                 0x0031: "GSM 6.10", 0x0050: "MPEG", 0x0055: "MP3"}
_EXPECTED = "expected uncompressed PCM (8, 16, 24 or 32-bit) or 32/64-bit float"
_STREAMING_SIZE = 0xFFFFFFFF        # a data size written by a streaming writer: "to the end"


class _Undecodable(Exception):
    """Why a file is not a WAV file rnnkit can decode (becomes the ValueError's text)."""


def _read_exactly(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Undecodable(f"the file ends inside {what}")
    return data


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    """(kind _PCM or _FLOAT, channels, rate, bytes per sample) of a fmt chunk's body."""
    if len(body) < 16:
        raise _Undecodable(f"a fmt chunk of {len(body)} bytes, fewer than 16")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
    kind = tag
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise _Undecodable(f"a WAVE_FORMAT_EXTENSIBLE fmt chunk of {len(body)} bytes, "
                               f"fewer than 40")
        guid = body[24:40]
        kind = struct.unpack_from("<H", guid)[0]
        if guid[2:] != _GUID_TAIL or kind not in (_PCM, _FLOAT):
            raise _Undecodable(f"WAVE_FORMAT_EXTENSIBLE with subformat {guid.hex()}")
    elif tag not in (_PCM, _FLOAT):
        name = _FORMAT_NAMES.get(tag)
        raise _Undecodable(f"format tag {tag:#06x}" + (f", {name}" if name else "")
                           + ", a compressed or unknown encoding")
    width = (bits + 7) // 8
    if channels <= 0 or rate <= 0 or bits <= 0:
        raise _Undecodable(f"{channels} channel(s) of {bits} bits at {rate} Hz")
    if kind == _PCM and width not in (1, 2, 3, 4):
        raise _Undecodable(f"integer samples of {bits} bits")
    if kind == _FLOAT and bits not in (32, 64):
        raise _Undecodable(f"float samples of {bits} bits")
    if block_align != width * channels:
        raise _Undecodable(f"{block_align} bytes a frame, but {channels} channel(s) of "
                           f"{width} bytes make {width * channels}")
    return kind, channels, rate, width


def _decode(raw: bytes, kind: int, channels: int, width: int) -> np.ndarray:
    """Mono float32 samples in [-1, 1] of whole frames ``raw``."""
    if kind == _FLOAT:
        samples = np.frombuffer(raw, dtype=np.dtype(f"<f{width}"))
        if not np.isfinite(samples).all():
            raise _Undecodable("float samples that are NaN or infinite")
        samples = np.clip(samples, -1.0, 1.0).astype(np.float32)
    else:
        data = np.frombuffer(raw, dtype=np.uint8)
        if width == 3:                                   # 24-bit: widen to 32 bits
            data = np.concatenate([np.zeros((len(data) // 3, 1), np.uint8),
                                   data.reshape(-1, 3)], axis=1).reshape(-1)
            width = 4
        samples = data.view(np.dtype(_WIDTH_DTYPES[width]).newbyteorder("<")).astype(
            np.float32)
        if width == 1:                                   # 8-bit WAV is unsigned
            samples -= 128.0
        samples /= float(2 ** (8 * width - 1))
    return samples.reshape(-1, channels).mean(axis=1)


def _read_wav(path, expected_rate: int | None = None) -> tuple[np.ndarray, int]:
    """:func:`read_wav`, and with ``expected_rate`` the rate checked (:func:`check_rate`)
    from the header, before any sample is read."""
    with open(os.fspath(path), "rb") as f:
        try:
            file_size = os.fstat(f.fileno()).st_size
            riff = f.read(12)
            if len(riff) < 12 or riff[8:12] != b"WAVE" or riff[:4] not in (b"RIFF", b"RF64",
                                                                           b"RIFX"):
                raise _Undecodable("no RIFF/WAVE header")
            if riff[:4] != b"RIFF":
                raise _Undecodable(f"a {riff[:4].decode()} file; only little-endian RIFF "
                                   f"WAV files are read")
            fmt = None
            while True:                                  # chunks up to the data chunk
                header = f.read(8)
                if len(header) == 0:
                    raise _Undecodable("no data chunk" if fmt else "no fmt chunk")
                if len(header) < 8:
                    raise _Undecodable("the file ends inside a chunk header")
                chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk_id == b"fmt ":
                    if fmt is not None:
                        raise _Undecodable("two fmt chunks")
                    if size > 1024:
                        raise _Undecodable(f"a fmt chunk of {size:,} bytes")
                    fmt = _parse_fmt(_read_exactly(f, size, "the fmt chunk"))
                    kind, channels, rate, width = fmt
                    if expected_rate is not None:
                        check_rate(path, rate, expected_rate)
                    f.seek(size & 1, os.SEEK_CUR)
                elif chunk_id == b"data":
                    if fmt is None:
                        raise _Undecodable("a data chunk before the fmt chunk")
                    break
                else:                                    # LIST, fact, cue, …: skipped
                    if f.tell() + size > file_size:
                        raise _Undecodable(f"the file ends inside its "
                                           f"{chunk_id.decode('latin-1')!r} chunk")
                    f.seek(size + (size & 1), os.SEEK_CUR)
        except (_Undecodable, struct.error, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a WAV file rnnkit can decode ({error}); "
                             f"{_EXPECTED}") from None
        kind, channels, rate, width = fmt
        held = file_size - f.tell()
        if size == _STREAMING_SIZE:
            size = held
        frame = channels * width
        frames = size // frame
        if frames > MAX_AUDIO_SECONDS * rate:            # frames x channels x width bytes
            raise ValueError(f"{path}: {frames / rate:,.0f} seconds of audio; rnnkit reads "
                             f"an utterance whole, at most {MAX_AUDIO_SECONDS} seconds: "
                             f"split it")
        if frames == 0:
            raise ValueError(f"{path}: a WAV file without samples")
        if held < frames * frame:
            raise ValueError(f"{path}: a truncated WAV file: its header declares {size:,} "
                             f"bytes of samples, the file holds {max(held, 0):,}")
        raw = f.read(frames * frame)
    if len(raw) != frames * frame:                       # the file shrank while read
        raise ValueError(f"{path}: a truncated WAV file")
    try:
        return _decode(raw, kind, channels, width), rate
    except _Undecodable as error:
        raise ValueError(f"{path}: not a WAV file rnnkit can decode ({error}); "
                         f"{_EXPECTED}") from None


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples (N,) float32 in [-1, 1], sample rate) of an uncompressed WAV file (integer
    PCM of 8 to 32 bits or 32/64-bit float, plain or WAVE_FORMAT_EXTENSIBLE, channels
    averaged); ``ValueError`` naming the file for one that does not decode, is truncated
    or holds more than MAX_AUDIO_SECONDS (checked from the header before any sample is
    read)."""
    return _read_wav(path)


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
        samples, rate = _read_wav(path, sample_rate)     # the rate checked before reading
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

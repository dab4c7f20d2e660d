"""WAV files for the speech recognizer (rnnkit.data.audio.read_wav): the RIFF chunks parsed by
rnnkit — 8/16/24/32-bit integer PCM, IEEE float, WAVE_FORMAT_EXTENSIBLE, several channels
averaged — written here by hand (struct + NumPy, no sox needed), and the refusals: another
sample rate, a header declaring more than the file holds or than the seconds bound allows
(checked before anything is read), a file that is not a WAV file."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from rnnkit.data import audio

RATE = 16000
PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def signal(n: int = 1600, phase: float = 0.0) -> np.ndarray:
    """A known signal in [-0.9, 0.9]: a 440 Hz sine plus a ramp."""
    t = np.arange(n) / RATE
    return 0.6 * np.sin(2 * np.pi * 440 * t + phase) + 0.3 * np.linspace(-1, 1, n)


def encode(x: np.ndarray, bits: int, floating: bool = False) -> tuple[bytes, np.ndarray]:
    """(little-endian sample bytes of ``x`` (frames, channels), the values rnnkit should
    read back per sample in [-1, 1])."""
    if floating:
        dtype = np.dtype(f"<f{bits // 8}")
        return x.astype(dtype).tobytes(), x.astype(dtype).astype(np.float64)
    scale = 2 ** (bits - 1)
    ints = np.round(x * (scale - 1)).astype(np.int64)
    if bits == 8:                                        # 8-bit WAV is unsigned
        return (ints + 128).astype(np.uint8).tobytes(), ints / scale
    if bits == 24:
        u = (ints & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]
        return u.tobytes(), ints / scale
    return ints.astype(f"<i{bits // 8}").tobytes(), ints / scale


def wav_bytes(data: bytes, *, channels: int = 1, bits: int = 16, rate: int = RATE,
              tag: int = PCM, extensible: bool = False, data_size: int | None = None,
              before_data: bytes = b"", subformat: bytes | None = None) -> bytes:
    """A WAV file: RIFF header, fmt chunk (16 bytes, or 40 for WAVE_FORMAT_EXTENSIBLE with
    ``tag`` as its subformat), ``before_data`` (other chunks), the data chunk."""
    width = (bits + 7) // 8
    fmt = struct.pack("<HHIIHH", EXTENSIBLE if extensible else tag, channels, rate,
                      rate * channels * width, channels * width, bits)
    if extensible:
        guid = subformat if subformat is not None else struct.pack("<H", tag) + GUID_TAIL
        fmt += struct.pack("<HHI", 22, bits, (1 << channels) - 1) + guid
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + before_data + b"data"
            + struct.pack("<I", len(data) if data_size is None else data_size) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def check_reads(path: Path, expected: np.ndarray, tolerance: float = 1e-6) -> None:
    samples, rate = audio.read_wav(path)
    assert rate == RATE and samples.dtype == np.float32 and samples.shape == expected.shape
    assert np.abs(samples - expected).max() <= tolerance


# ---------------------------------------------------------------- formats that decode

@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("extensible", [False, True], ids=["plain", "extensible"])
def test_integer_pcm_of_every_width(tmp_path, bits, extensible):
    x = signal()
    data, expected = encode(x[:, None], bits)
    f = write(tmp_path / f"pcm{bits}.wav", wav_bytes(data, bits=bits, extensible=extensible))
    check_reads(f, expected[:, 0])
    samples, _ = audio.read_wav(f)                      # and the signal itself, to its bits
    assert np.abs(samples - x).max() < max(2.0 / 2 ** (bits - 1), 1e-7)   # float32


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("extensible", [False, True], ids=["plain", "extensible"])
def test_ieee_float(tmp_path, bits, extensible):
    x = signal()
    data, expected = encode(x[:, None], bits, floating=True)
    f = write(tmp_path / f"float{bits}.wav",
              wav_bytes(data, bits=bits, tag=FLOAT, extensible=extensible))
    check_reads(f, expected[:, 0])


@pytest.mark.parametrize(("channels", "bits", "extensible"),
                         [(2, 16, False), (2, 8, False), (3, 24, True), (3, 16, True),
                          (6, 32, True)])
def test_several_channels_are_averaged(tmp_path, channels, bits, extensible):
    x = np.stack([signal(phase=k) * (1 - 0.2 * k) for k in range(channels)], axis=1)
    data, expected = encode(x, bits)
    f = write(tmp_path / f"c{channels}.wav",
              wav_bytes(data, channels=channels, bits=bits, extensible=extensible))
    check_reads(f, expected.reshape(-1, channels).mean(axis=1))


def test_float_stereo_extensible(tmp_path):
    x = np.stack([signal(), -0.5 * signal()], axis=1)
    data, expected = encode(x, 32, floating=True)
    f = write(tmp_path / "fs.wav", wav_bytes(data, channels=2, bits=32, tag=FLOAT,
                                             extensible=True))
    check_reads(f, expected.mean(axis=1))


def test_the_same_samples_as_the_standard_library_writes(tmp_path):
    x = signal()
    ints = np.round(x * 32767).astype("<i2")
    with wave.open(str(tmp_path / "w.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        w.writeframes(ints.tobytes())
    check_reads(tmp_path / "w.wav", ints / 32768.0, 0.0)


def test_other_chunks_odd_sizes_a_partial_frame_and_a_streaming_size(tmp_path):
    x = signal(801)
    data, expected = encode(x[:, None], 16)
    odd_list = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\0"      # padded to even
    fact = b"fact" + struct.pack("<I", 4) + struct.pack("<I", len(x))
    f = write(tmp_path / "chunks.wav", wav_bytes(data + b"\x7f", before_data=odd_list + fact,
                                                 data_size=len(data) + 1))
    check_reads(f, expected[:, 0])                       # the half frame at the end: dropped
    f = write(tmp_path / "stream.wav", wav_bytes(data, data_size=0xFFFFFFFF))
    check_reads(f, expected[:, 0])                       # "until the end of the file"
    f = write(tmp_path / "trailer.wav", wav_bytes(data) + b"LIST" + struct.pack("<I", 4)
              + b"INFO")
    check_reads(f, expected[:, 0])                       # chunks after the data: ignored


def test_an_extensible_file_gives_features(tmp_path):
    pytest.importorskip("kaldi_native_fbank")
    x = np.stack([signal(4000), signal(4000), signal(4000)], axis=1)
    data, _ = encode(x, 24)
    f = write(tmp_path / "x.wav", wav_bytes(data, channels=3, bits=24, extensible=True))
    mono = write(tmp_path / "m.wav", wav_bytes(encode(signal(4000)[:, None], 24)[0], bits=24))
    assert np.abs(audio.read_wav(f)[0] - audio.read_wav(mono)[0]).max() < 1e-6
    a = audio.utterance_features(f, RATE, 20)           # 3 equal channels: the mono signal
    b = audio.utterance_features(mono, RATE, 20)
    # (the bands above the sine hold hardly any energy: their logs amplify float32 rounding)
    assert a.shape == b.shape == (23, 20) and np.isfinite(a).all()
    assert np.abs(a - b)[:, :8].max() < 1e-3


# ---------------------------------------------------------------- refusals

def test_another_rate_is_the_rate_error_before_the_data_is_read(tmp_path):
    data, _ = encode(signal()[:, None], 16)
    f = write(tmp_path / "fast.wav", wav_bytes(data, rate=22050))
    assert audio.read_wav(f)[1] == 22050
    with pytest.raises(ValueError, match=r"fast.wav: sample rate 22050 Hz, but the features "
                                         r"are computed at 16000 Hz; resample .*'sox fast.wav "
                                         r"-r 16000 out.wav'.*--sample-rate 22050"):
        audio.utterance_features(f, RATE, 20)
    # a header claiming an hour of samples the file does not hold: the rate is checked first
    f = write(tmp_path / "claims.wav", wav_bytes(b"", rate=22050, data_size=22050 * 3600 * 2))
    with pytest.raises(ValueError, match="claims.wav: sample rate 22050 Hz"):
        audio.utterance_features(f, RATE, 20)


def test_a_truncated_data_chunk_is_refused(tmp_path):
    data, _ = encode(signal()[:, None], 24)
    f = write(tmp_path / "cut.wav", wav_bytes(data, bits=24, extensible=True)[:-300])
    with pytest.raises(ValueError, match=r"cut.wav: a truncated WAV file: its header "
                                         r"declares 4,800 bytes of samples, the file holds "
                                         r"4,500"):
        audio.read_wav(f)


def test_the_size_bound_is_checked_from_the_header_before_anything_is_allocated(tmp_path):
    # more than MAX_AUDIO_SECONDS: the existing seconds error
    f = write(tmp_path / "long.wav", wav_bytes(b"\0" * 64, bits=32, channels=8,
                                               data_size=0xFFFFFF00))
    with pytest.raises(ValueError, match=r"long.wav: 8,389 seconds of audio; .*at most 600 "
                                         r"seconds: split it"):
        audio.read_wav(f)
    # within the bound (590 s of 8 x 32-bit channels, 300 MB) but not in the file: refused
    # as truncated without reading (or allocating) the bytes the header promises
    declared = 590 * RATE * 8 * 4
    f = write(tmp_path / "promise.wav", wav_bytes(b"\0" * 64, bits=32, channels=8,
                                                  data_size=declared))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"promise.wav: a truncated WAV file"):
            audio.read_wav(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(("name", "content", "why"), [
    ("text.wav", b"not audio at all", "no RIFF/WAVE header"),
    ("empty.wav", b"", "no RIFF/WAVE header"),
    ("header.wav", wav_bytes(b"\0\0" * 10)[:30], "the file ends inside the fmt chunk"),
    ("nofmt.wav", b"RIFF" + struct.pack("<I", 4) + b"WAVE", "no fmt chunk"),
    ("nodata.wav", wav_bytes(b"")[:36], "no data chunk"),
    ("mp3.wav", wav_bytes(b"\0" * 8, tag=0x55), "format tag 0x0055, MP3"),
    ("alaw.wav", wav_bytes(b"\0" * 8, bits=8, tag=6), "format tag 0x0006, A-law"),
    ("guid.wav", wav_bytes(b"\0" * 8, extensible=True, subformat=b"\x01" + b"\0" * 15),
     "WAVE_FORMAT_EXTENSIBLE with subformat"),
    ("pcm64.wav", wav_bytes(b"\0" * 16, bits=64), "integer samples of 64 bits"),
    ("float16.wav", wav_bytes(b"\0" * 8, bits=16, tag=FLOAT), "float samples of 16 bits"),
    ("zero.wav", wav_bytes(b"\0" * 8, channels=0), "0 channel"),
    ("rifx.wav", b"RIFX" + wav_bytes(b"\0" * 8)[4:], "a RIFX file"),
    ("nan.wav", wav_bytes(np.array([0.0, np.nan], "<f4").tobytes(), bits=32, tag=FLOAT),
     "NaN or infinite"),
])
def test_what_does_not_decode_is_a_value_error_naming_the_file(tmp_path, name, content, why):
    f = write(tmp_path / name, content)
    with pytest.raises(ValueError) as error:
        audio.read_wav(f)
    message = str(error.value)
    assert message.startswith(f"{f}: not a WAV file rnnkit can decode (")
    assert why in message and "expected uncompressed PCM (8, 16, 24 or 32-bit)" in message


def test_no_samples_and_a_missing_file(tmp_path):
    f = write(tmp_path / "silent.wav", wav_bytes(b"\0"))           # less than one frame
    with pytest.raises(ValueError, match="silent.wav: a WAV file without samples"):
        audio.read_wav(f)
    with pytest.raises(FileNotFoundError):      # the manifest reader names the line for it
        audio.read_wav(tmp_path / "missing.wav")


# ---------------------------------------------------------------- what sox writes (optional)

@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
@pytest.mark.parametrize("options", [["-b", "24"], ["-b", "32"], ["-e", "floating-point", "-b",
                                     "32"], ["-c", "3"], ["-b", "24", "-c", "3"]],
                         ids=["24bit", "32bit", "float32", "3ch", "24bit-3ch"])
def test_what_sox_writes_reads_as_the_original(tmp_path, options):
    data, expected = encode(signal()[:, None], 16)
    original = write(tmp_path / "in.wav", wav_bytes(data))
    out = tmp_path / "out.wav"
    subprocess.run(["sox", str(original), *options, str(out)], check=True,
                   capture_output=True)
    tag = struct.unpack_from("<H", out.read_bytes(), 20)[0]
    assert tag in (PCM, FLOAT, EXTENSIBLE)
    if "-c" in options or options == ["-b", "24"]:
        assert tag == EXTENSIBLE                         # what Python's wave module refuses
    check_reads(out, expected[:, 0])
    assert np.array_equal(audio.read_wav(out)[0], audio.read_wav(original)[0])


def test_the_features_kept_in_memory_are_bounded(tmp_path, monkeypatch):
    """Past MAX_DECODED_BYTES of features, reading stops with the manifest's line."""
    import pytest as _pytest

    from rnnkit.tasks import recognizer
    from tiny_data import tiny_speech

    manifest = tiny_speech(tmp_path)
    utterances = recognizer.read_manifest(manifest)
    features, _ = recognizer.read_features(utterances, manifest, 8000, 8)
    first_two = sum(f.numel() * 4 for f in features[:2])
    monkeypatch.setattr(recognizer, "MAX_DECODED_BYTES", first_two)
    with _pytest.raises(ValueError, match=r"speech.tsv, line 3: the features read so far"):
        recognizer.read_features(utterances, manifest, 8000, 8)

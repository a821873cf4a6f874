"""Hermetic tests of audio.load: formats, resampling and every way a file is refused
(test audio generated with numpy+soundfile)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf
from conftest import dominant_freq, sine

import audio
from audio import load
from audio.errors import AudioError


@pytest.mark.parametrize("fmt,ext,subtype,rate,channels", [
    ("WAV", "wav", "PCM_16", 8000, 1),
    ("WAV", "wav", "PCM_16", 44100, 2),
    ("WAV", "wav", "PCM_U8", 22050, 1),
    ("WAV", "wav", "FLOAT", 48000, 1),
    ("WAV", "wav", "PCM_24", 16000, 6),
    ("FLAC", "flac", "PCM_16", 48000, 2),
    ("FLAC", "flac", "PCM_24", 8000, 1),
    ("OGG", "ogg", "VORBIS", 44100, 2),
    ("OGG", "ogg", "VORBIS", 16000, 1),
])
def test_load_formats_rates_channels(tmp_path, fmt, ext, subtype, rate, channels):
    path = tmp_path / f"clip.{ext}"
    sf.write(path, sine(440, 1.0, rate, channels), rate, format=fmt, subtype=subtype)
    y = load(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 16000) <= 2
    assert abs(dominant_freq(y, 16000) - 440) < 3
    assert 0.3 < np.max(np.abs(y)) < 0.7


def test_load_other_target_rate_and_downmix(tmp_path):
    rate = 44100
    left, right = sine(1000, 0.5, rate), sine(1000, 0.5, rate, amp=0.1)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    y = load(path, sample_rate=8000)
    assert abs(len(y) - 4000) <= 2
    assert abs(np.max(np.abs(y[100:-100])) - 0.3) < 0.02  # mean of the two channels


@pytest.mark.parametrize("src_rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_frequency(tmp_path, src_rate):
    path = tmp_path / "s.wav"
    sf.write(path, sine(1234.0, 1.0, src_rate), src_rate, subtype="FLOAT")
    y = load(path, sample_rate=16000)
    assert abs(dominant_freq(y, 16000) - 1234.0) < 2
    y2 = load(path, sample_rate=32000)
    assert abs(dominant_freq(y2, 32000) - 1234.0) < 2


def _wav_bytes(tmp_path):
    path = tmp_path / "ok.wav"
    sf.write(path, sine(440, 1.0, 16000), 16000, subtype="PCM_16")
    return path.read_bytes()


def expect_error(path, match, **kw):
    with pytest.raises(AudioError) as info:
        load(path, **kw)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert match in msg, msg
    return msg


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.wav", "not found")


def test_zero_length_file(tmp_path):
    p = tmp_path / "zero.wav"
    p.write_bytes(b"")
    expect_error(p, "empty")


def test_garbage_bytes(tmp_path):
    p = tmp_path / "garbage.wav"
    p.write_bytes(b"this is not audio at all" * 50)
    expect_error(p, "unreadable")


def test_wrong_header(tmp_path):
    data = bytearray(_wav_bytes(tmp_path))
    data[8:12] = b"JUNK"  # RIFF....JUNK instead of WAVE
    p = tmp_path / "badheader.wav"
    p.write_bytes(bytes(data))
    expect_error(p, "unreadable")


def test_truncated_wav(tmp_path):
    data = _wav_bytes(tmp_path)
    p = tmp_path / "trunc.wav"
    p.write_bytes(data[: len(data) // 2])
    expect_error(p, "truncated")


@pytest.mark.parametrize("fmt,ext", [("FLAC", "flac"), ("OGG", "ogg")])
def test_truncated_flac_ogg(tmp_path, fmt, ext):
    full = tmp_path / f"full.{ext}"
    rng = np.random.default_rng(0)
    sf.write(full, (0.1 * rng.standard_normal(32000)).astype(np.float32), 16000, format=fmt)
    data = full.read_bytes()
    p = tmp_path / f"trunc.{ext}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError) as info:
        load(p)
    assert str(p) in str(info.value)
    assert any(w in str(info.value) for w in ("truncated", "corrupt", "empty"))


def test_empty_audio(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), 16000)
    expect_error(p, "empty")


def test_nan_samples(tmp_path):
    x = sine(440, 0.5, 16000)
    x[100] = np.nan
    x[200] = np.inf
    p = tmp_path / "nan.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    expect_error(p, "NaN")


def test_too_long_and_too_short(tmp_path):
    p = tmp_path / "long.wav"
    sf.write(p, np.zeros(8000 * 3, dtype=np.int16), 8000)
    expect_error(p, "too long", max_duration=2.0)
    assert load(p, max_duration=5.0).shape == (48000,)
    s = tmp_path / "short.wav"
    sf.write(s, np.zeros(400, dtype=np.int16), 8000)  # 0.05 s
    expect_error(s, "too short")
    assert load(s, min_duration=0.01).size == 800


def test_huge_declared_length_does_not_allocate(tmp_path):
    """A WAV header claiming ~4 GB of data is rejected from the header alone."""
    data = bytearray(_wav_bytes(tmp_path))
    pos = data.index(b"data")
    data[pos + 4:pos + 8] = struct.pack("<I", 0xFFFFFFF0)
    p = tmp_path / "huge.wav"
    p.write_bytes(bytes(data))
    expect_error(p, "truncated")


def test_huge_declared_flac_length_rejected_before_decoding(tmp_path):
    """FLAC STREAMINFO declares the total sample count; a huge one fails the duration check."""
    full = tmp_path / "f.flac"
    sf.write(full, sine(440, 0.5, 16000), 16000, format="FLAC")
    data = bytearray(full.read_bytes())
    # STREAMINFO starts at byte 8; total samples is the low 36 bits of bytes 21..25.
    packed = int.from_bytes(data[21:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | ((1 << 36) - 2)
    data[21:26] = packed.to_bytes(5, "big")
    p = tmp_path / "huge.flac"
    p.write_bytes(bytes(data))
    expect_error(p, "too long")


def test_audio_imports_only_allowed_modules():
    import ast
    import pathlib

    allowed = {"numpy", "librosa", "soundfile", "soxr", "mpc"}  # soxr: librosa's resampler
    import sys

    stdlib = set(sys.stdlib_module_names)
    for path in pathlib.Path(audio.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    continue
                names = [node.module]
                if node.module.startswith("mpc") and node.module != "mpc.errors":
                    raise AssertionError(f"{path.name} imports {node.module}")
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                assert top in allowed or top in stdlib or top == "audio", (path.name, n)


def test_the_package_re_exports_its_submodules():
    """`audio.load`, `audio.features` and the limits are the submodules' own objects."""
    import sys

    from audio import errors, loading

    feature_module = sys.modules["audio.features"]
    for name in ("load", "DEFAULT_MAX_DURATION", "DEFAULT_MIN_DURATION", "MIN_SAMPLE_RATE",
                 "MAX_SAMPLE_RATE"):
        assert getattr(audio, name) is getattr(loading, name), name
    for name in feature_module.__all__:
        assert getattr(audio, name) is getattr(feature_module, name), name
    assert audio.AudioError is errors.AudioError
    assert set(audio.__all__) >= set(loading.__all__) | set(feature_module.__all__)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
@pytest.mark.parametrize("length", [1, 999, 48001])
def test_resampling_gives_librosa_s_samples(rate, length):
    import librosa

    from audio.loading import resample

    signal = np.random.default_rng(length).normal(size=length).astype(np.float32)
    ours = resample(signal, rate, 16000)
    theirs = librosa.resample(signal, orig_sr=rate, target_sr=16000)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)

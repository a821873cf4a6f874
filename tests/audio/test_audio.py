"""Hermetic tests of audio.load / audio.features (test audio generated with numpy+soundfile)."""

from __future__ import annotations

import dataclasses
import struct

import librosa
import numpy as np
import pytest
import soundfile as sf

import audio
from audio import FeatureConfig, features, fit_length, load, log_mel, prepare
from mpc.errors import AudioError


def sine(freq, seconds, rate, channels=1, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def dominant_freq(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)]


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------

def speechlike(seconds, rate=16000, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    env = np.hanning(n)
    x = env * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 660 * t)
               + 0.05 * rng.standard_normal(n))
    return (0.3 * x).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.3, 1.0, 3.5, 5.0])
def test_features_shape_dtype(seconds):
    f = features(speechlike(seconds))
    assert f.shape == (1, 40, 350)
    assert f.dtype == np.float32
    assert np.all(np.isfinite(f))


def test_default_config_shape():
    c = FeatureConfig()
    assert c.shape == (1, 40, 350)
    assert (c.win_length, c.hop_length, c.num_samples) == (400, 160, 56000)


def test_trim_removes_silence():
    x = speechlike(1.0)
    padded = np.concatenate([np.zeros(16000, np.float32), x, np.zeros(8000, np.float32)])
    a, b = prepare(x), prepare(padded)
    assert abs(a.size - b.size) <= 512
    assert b.size < x.size + 1024
    # the trimmed clips line up to within a trim hop (256 samples < 2 frames)
    fa, fb = features(x)[0], features(padded)[0]
    assert np.corrcoef(fa.ravel(), fb.ravel())[0, 1] > 0.95
    loud = fa.mean(axis=0) > -60
    assert abs(int(loud.sum()) - int((fb.mean(axis=0) > -60).sum())) <= 4


def test_fit_length_pads_and_crops_centred():
    x = np.arange(1, 11, dtype=np.float32)
    out = fit_length(x, 20)
    assert out.shape == (20,)
    np.testing.assert_array_equal(out[5:15], x)
    assert not out[:5].any() and not out[15:].any()
    np.testing.assert_array_equal(fit_length(x, 4), x[3:7])
    np.testing.assert_array_equal(fit_length(x, 10), x)
    shifted = fit_length(x, 20, offset=3)
    np.testing.assert_array_equal(shifted[8:18], x)
    np.testing.assert_array_equal(fit_length(x, 20, offset=-8), np.r_[x[3:], np.zeros(13)])


def test_long_signal_is_cropped_to_its_centre():
    rate = 16000
    x = np.concatenate([sine(300, 2.0, rate), sine(3000, 1.5, rate), sine(300, 2.0, rate)])
    y = fit_length(prepare(x), 56000)
    assert abs(dominant_freq(y[20000:36000], rate) - 3000) < 5


def test_features_agree_with_librosa():
    config = FeatureConfig()
    x = speechlike(2.0)
    fixed = fit_length(prepare(x, config), config.num_samples)
    ours = log_mel(fixed, config)[0]
    padded = np.pad(fixed, (120, 120))
    mel = librosa.feature.melspectrogram(y=padded, sr=16000, n_fft=400, hop_length=160,
                                         win_length=400, center=False, n_mels=40,
                                         fmin=0.0, fmax=8000.0)
    ref = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    assert ref.shape == (40, 350)
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    np.testing.assert_array_equal(features(x, config), ours[None])
    # frame k is centred on sample k*hop of the unpadded window: check with a click
    click = np.zeros(config.num_samples, np.float32)
    click[160 * 100] = 1.0
    energy = log_mel(click, config)[0].mean(axis=0)
    assert int(np.argmax(energy)) in (99, 100, 101)


def test_peak_normalisation_and_gain_invariance():
    x = speechlike(1.0)
    np.testing.assert_allclose(features(x), features(0.1 * x), atol=1e-3)
    c = FeatureConfig(peak_normalize=False)
    assert not np.allclose(features(x, c), features(0.1 * x, c), atol=1.0)


def test_feature_errors():
    with pytest.raises(AudioError, match="signal"):
        features(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        features(np.array([0.0, np.nan, 1.0], np.float32))
    with pytest.raises(AudioError, match="1-D"):
        features(np.zeros((10, 2), np.float32))
    silent = features(np.zeros(1000, np.float32))
    assert silent.shape == (1, 40, 350) and np.allclose(silent, -100.0)


def test_feature_config_round_trip():
    c = FeatureConfig(n_mels=32, trim_top_db=30.0, fmax=7600.0)
    d = c.to_dict()
    assert isinstance(d, dict) and d["n_mels"] == 32
    assert FeatureConfig.from_dict(d) == c
    assert FeatureConfig.from_dict(FeatureConfig().to_dict()) == FeatureConfig()
    with pytest.raises(ValueError):
        FeatureConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError):
        FeatureConfig(hop_length=500)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_mels = 10


def test_custom_config_shape():
    c = FeatureConfig(n_mels=20, duration=2.0)
    assert features(speechlike(1.0), c).shape == (1, 20, 200)


def test_audio_imports_only_allowed_modules():
    import ast
    import pathlib

    allowed = {"numpy", "librosa", "soundfile", "mpc"}
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


# --------------------------------------------------------------------------------------------
# time normalisation and per-utterance band normalisation (FeatureConfig options)
# --------------------------------------------------------------------------------------------

def test_new_options_default_off_so_old_configs_mean_what_they_meant():
    old = {k: v for k, v in FeatureConfig().to_dict().items()
           if k not in ("time_normalize", "normalize")}  # a config saved before the options
    c = FeatureConfig.from_dict(old)
    assert (c.time_normalize, c.normalize) == (False, "none")
    x = speechlike(1.0)
    np.testing.assert_array_equal(features(x, c), features(x))
    with pytest.raises(ValueError, match="normalize"):
        FeatureConfig(normalize="global")


@pytest.mark.parametrize("seconds", [0.01, 0.3, 1.0, 3.5, 7.0])
def test_time_normalized_features_shape_and_finite(seconds):
    c = FeatureConfig(time_normalize=True, normalize="band")
    f = features(speechlike(seconds), c)
    assert f.shape == (1, 40, 350) and f.dtype == np.float32
    assert np.all(np.isfinite(f))
    assert features(np.zeros(1000, np.float32), c).shape == (1, 40, 350)


def test_time_normalization_stretches_the_utterance_over_the_map():
    c = FeatureConfig(time_normalize=True)
    rate = 16000
    # a 0.5 s tone then a 0.5 s tone an octave and a half higher; and the same twice as slow
    fast = np.concatenate([sine(300, 0.5, rate), sine(1000, 0.5, rate)])
    slow = np.concatenate([sine(300, 1.0, rate), sine(1000, 1.0, rate)])
    a, b = features(fast, c)[0], features(slow, c)[0]
    band_lo = int(np.argmax(a[:, 80]))
    band_hi = int(np.argmax(a[:, 270]))
    assert band_hi > band_lo + 5  # first half low, second half high, filling the map
    assert int(np.argmax(b[:, 80])) == band_lo and int(np.argmax(b[:, 270])) == band_hi
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
    # the trimmed utterance's own frames, interpolated: the first and last frames are exact
    trimmed = prepare(fast, c)
    own = audio.stretched_log_mel(trimmed, c)[0]
    np.testing.assert_array_equal(own, a)
    half = (c.win_length - c.hop_length) // 2
    mel = librosa.feature.melspectrogram(
        y=np.pad(trimmed, (half, half)), sr=rate, n_fft=400, hop_length=160, win_length=400,
        center=False, n_mels=40, fmin=0.0, fmax=8000.0)
    ref = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    np.testing.assert_allclose(a[:, [0, -1]], ref[:, [0, -1]], atol=1e-3)


def test_band_normalization_zero_mean_unit_variance_per_band_and_gain_invariance():
    c = FeatureConfig(normalize="band", peak_normalize=False)
    x = speechlike(2.0)
    f = features(x, c)[0]
    np.testing.assert_allclose(f.mean(axis=1), 0.0, atol=1e-4)
    std = f.std(axis=1)
    assert np.all((np.abs(std - 1.0) < 1e-3) | (std < 1e-3))
    # a gain is a constant in dB: removed by the normalisation even without peak scaling
    # (with padding the log floor of the padded frames does not move, so stretch instead)
    s = dataclasses.replace(c, time_normalize=True)
    np.testing.assert_allclose(features(0.1 * x, s), features(x, s), atol=1e-3)
    np.testing.assert_array_equal(audio.normalize_bands(f[None], FeatureConfig()), f[None])

"""Hermetic tests of audio.features and FeatureConfig: shape, trimming, padding, agreement
with librosa, time and band normalisation (signals generated with numpy)."""

from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pytest
from conftest import dominant_freq, sine, speechlike

import audio
from audio import FeatureConfig, features, fit_length, log_mel, prepare
from audio.errors import AudioError


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

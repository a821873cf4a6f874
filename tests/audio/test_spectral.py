"""audio.spectral computes what librosa computes, value for value, without its imports."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from conftest import bundled_clips

from audio import FeatureConfig, load
from audio.spectral import loud_span, mel_power


def _signals() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    quiet_edges = np.concatenate([np.zeros(3000), rng.normal(size=20000) * 0.3,
                                  rng.normal(size=5000) * 1e-4]).astype(np.float32)
    clips = [load(c) for c in bundled_clips(3)]
    return [rng.normal(size=n).astype(np.float32) for n in (400, 4001, 56240)] + [
        quiet_edges, *clips]


@pytest.mark.parametrize("index", range(6))
def test_loud_span_is_librosa_s_trim(index):
    x = _signals()[index]
    for top_db in (20.0, 40.0, 60.0):
        _, interval = librosa.effects.trim(x, top_db=top_db, frame_length=1024,
                                           hop_length=256)
        assert loud_span(x, top_db, 1024, 256) == tuple(int(v) for v in interval)


@pytest.mark.parametrize("index", range(6))
def test_mel_power_is_librosa_s_melspectrogram(index):
    c = FeatureConfig()
    x = _signals()[index]
    theirs = librosa.feature.melspectrogram(
        y=x, sr=c.sample_rate, n_fft=c.win_length, hop_length=c.hop_length,
        win_length=c.win_length, window=c.window, center=False, power=c.power,
        n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax, htk=c.mel_htk, norm=c.mel_norm)
    ours = mel_power(x, c.sample_rate, c.win_length, c.hop_length, c.window, c.power,
                     c.n_mels, c.fmin, c.fmax, c.mel_htk, c.mel_norm)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    again = mel_power(x, c.sample_rate, c.win_length, c.hop_length, c.window, c.power,
                      c.n_mels, c.fmin, c.fmax, c.mel_htk, c.mel_norm)  # from the cache
    assert np.array_equal(again, theirs)

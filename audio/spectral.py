"""The spectral steps of the features without importing librosa's signal modules.

librosa's `stft`, `melspectrogram` and `effects.trim` import scipy.signal, which costs a fresh
process about 2 s: most of what a one-clip client spends before it sends anything. The
steps below compute the same values (tests/audio/test_spectral.py checks them against
librosa, sample for sample) from two constants of a configuration, the analysis window and
the mel filter bank. librosa makes those once per configuration; they are kept in a cache
folder (`$SOTTOVOCE_CACHE`, else `$XDG_CACHE_HOME/sottovoce`, else `~/.cache/sottovoce`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

_AMIN = 1e-5  # librosa.amplitude_to_db's floor of an amplitude


def frames(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """(length, count) view of `x`: column k is x[k * hop : k * hop + length] (the layout of
    `librosa.util.frame`, so reductions over it add in the same order)."""
    return np.lib.stride_tricks.sliding_window_view(x, length)[::hop].T


def cache_folder() -> Path:
    given = os.environ.get("SOTTOVOCE_CACHE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sottovoce"


def _constants(sample_rate: int, n_fft: int, window: str, n_mels: int, fmin: float,
               fmax: float, htk: bool, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """(window, mel filter bank) as librosa makes them, from the cache when it has them."""
    import librosa

    key = json.dumps([librosa.__version__, sample_rate, n_fft, window, n_mels, fmin, fmax,
                      htk, norm])
    path = cache_folder() / f"frontend-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            return saved["window"], saved["mel"]
    except (OSError, KeyError, ValueError):
        pass
    import librosa.filters

    win = librosa.filters.get_window(window, n_fft, fftbins=True)
    mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                              fmax=fmax, htk=htk, norm=norm)
    try:  # a cache: a folder that cannot be written only costs the next process time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with open(tmp, "wb") as handle:
            np.savez(handle, window=win, mel=mel)
        os.replace(tmp, path)
    except OSError:
        pass
    return win, mel


def mel_power(x: np.ndarray, sample_rate: int, n_fft: int, hop_length: int, window: str,
              power: float, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str
              ) -> np.ndarray:
    """(n_mels, frames) mel power of `x` framed without centring: what
    `librosa.feature.melspectrogram(..., center=False)` returns."""
    win, mel = _constants(sample_rate, n_fft, window, n_mels, fmin, fmax, htk, norm)
    columns = frames(x, n_fft, hop_length)
    spectrum = np.empty((n_fft // 2 + 1, columns.shape[-1]), dtype=np.complex64)
    spectrum[...] = np.fft.rfft(win[:, np.newaxis] * columns, axis=-2)  # in float64
    magnitude = np.abs(spectrum) ** power
    return np.einsum("...ft,mf->...mt", magnitude, mel, optimize=True)


def loud_span(x: np.ndarray, top_db: float, frame_length: int, hop_length: int
              ) -> tuple[int, int]:
    """(start, end) of `x` once leading and trailing frames more than `top_db` below the
    loudest one are cut: what `librosa.effects.trim` returns as its interval.

    A frame's loudness is its RMS over a window centred on it (the signal zero-padded by
    half a window at each end), in dB relative to the loudest frame."""
    padded = np.pad(x, (frame_length // 2, frame_length // 2))
    columns = frames(padded, frame_length, hop_length)
    rms = np.sqrt(np.mean(np.square(columns, dtype=np.float32), axis=-2, keepdims=True))
    amplitude = np.abs(rms[..., 0, :])
    reference = np.max(amplitude)
    floor = _AMIN ** 2
    db = 10.0 * np.log10(np.maximum(floor, np.square(amplitude)))
    db -= 10.0 * np.log10(np.maximum(floor, reference ** 2))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * hop_length), min(x.shape[-1], int((loud[-1] + 1) * hop_length))

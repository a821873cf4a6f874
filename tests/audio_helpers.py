"""Synthetic test signals shared by tests/audio (generated with numpy, no files needed)."""

from __future__ import annotations

import numpy as np


def sine(freq: float, seconds: float, rate: int, channels: int = 1,
         amp: float = 0.5) -> np.ndarray:
    """A float32 tone, (n,) or (n, channels) with every channel equal: a known frequency."""
    t = np.arange(int(seconds * rate)) / rate
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def dominant_freq(x: np.ndarray, rate: int) -> float:
    """The strongest frequency (Hz) of a mono signal, to check resampling kept the pitch."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)]


def speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Two harmonics and a little noise under a Hann envelope: loud middle, quiet edges."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    env = np.hanning(n)
    x = env * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 660 * t)
               + 0.05 * rng.standard_normal(n))
    return (0.3 * x).astype(np.float32)

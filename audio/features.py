"""Log-mel features of a mono signal, and the configuration saved with every model.

The training code composes :func:`prepare`, :func:`fit_length` (or
:func:`stretched_log_mel`), :func:`log_mel` and :func:`normalize_bands` itself to augment
clips; :func:`features` is the fixed composition the client runs. Every problem with a
signal raises :class:`audio.errors.AudioError` saying "signal".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from audio import spectral
from audio.errors import AudioError

__all__ = ["BAND_STD_FLOOR", "FeatureConfig", "features", "fit_length", "log_mel",
           "normalize_bands", "prepare", "stretched_log_mel"]

#: Added to a band's standard deviation (dB) before dividing, for ``normalize="band"``: a
#: constant band (e.g. silence at the log floor) maps to 0 instead of dividing by zero.
BAND_STD_FLOOR = 1e-3


@dataclass(frozen=True)
class FeatureConfig:
    """Every parameter of the feature pipeline; saved with the model (``to_dict``) so the
    client computes exactly what the model was trained on.

    Frame count. The signal is centred and padded/cropped to ``num_samples =
    duration * sample_rate`` samples (3.5 s = 56000 at 16 kHz), then zero-padded by
    ``(win_length - hop_length) / 2`` samples on each side (120 + 120 at 25 ms / 10 ms) and
    framed with ``center=False``. That gives ``1 + (56000 + 240 - 400) // 160 = 350`` frames
    exactly: one frame per hop, each window centred on its hop position.

    Time normalisation (``time_normalize=True``; off by default, so configurations saved
    before the option existed mean what they meant). Instead of centring and padding, the
    trimmed utterance's own frames (same window, hop and padding as above, however many
    there are) are linearly interpolated along time onto ``n_frames`` frames: every
    utterance fills the whole map from its first to its last frame, whatever its length.
    Speakers say the same phrase at very different speeds; stretching lines the phrases up,
    at the price of the absolute duration. The map has the same shape either way.

    Per-utterance normalisation (``normalize="band"``; default ``"none"``): after the dB map
    is computed (either way above), each mel band is shifted and scaled to mean 0 and
    standard deviation 1 over the map's frames (cepstral mean and variance normalisation on
    log-mel bands). It removes the utterance's average spectrum and level (much of what
    tells one speaker from another) and keeps how each band moves in time. With padding
    (``time_normalize=False``) the padded frames take part in the statistics.
    """

    sample_rate: int = 16000
    n_mels: int = 40
    win_length: int = 400  # 25 ms at 16 kHz; also the FFT size
    hop_length: int = 160  # 10 ms at 16 kHz
    duration: float = 3.5  # seconds after pad/crop
    fmin: float = 0.0
    fmax: float = 8000.0
    window: str = "hann"
    power: float = 2.0  # power spectrogram
    mel_htk: bool = False  # librosa's default (Slaney) mel scale
    mel_norm: str = "slaney"
    log_floor: float = 1e-10  # power floor before log; 10*log10(1e-10) = -100 dB
    trim_top_db: float = 40.0  # leading/trailing frames this far below the peak are silence
    trim_frame_length: int = 1024
    trim_hop_length: int = 256
    peak_normalize: bool = True  # scale the trimmed signal to a peak of 1.0
    time_normalize: bool = False  # stretch the trimmed utterance over all n_frames frames
    normalize: str = "none"  # "band": per-utterance mean/variance normalisation of each band

    def __post_init__(self):
        checks = [
            (self.sample_rate > 0, "sample_rate must be positive"),
            (self.n_mels > 0, "n_mels must be positive"),
            (0 < self.hop_length <= self.win_length, "need 0 < hop_length <= win_length"),
            ((self.win_length - self.hop_length) % 2 == 0,
             "win_length - hop_length must be even (symmetric padding)"),
            (self.duration > 0, "duration must be positive"),
            (0 <= self.fmin < self.fmax <= self.sample_rate / 2,
             "need 0 <= fmin < fmax <= sample_rate / 2"),
            (self.log_floor > 0, "log_floor must be positive"),
            (self.trim_top_db > 0, "trim_top_db must be positive"),
            (self.normalize in ("none", "band"), "normalize must be 'none' or 'band'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"FeatureConfig: {message}")
        if (self.num_samples % self.hop_length) != 0:
            raise ValueError("FeatureConfig: duration * sample_rate must be a multiple of "
                             "hop_length")

    @property
    def num_samples(self) -> int:
        """Samples after pad/crop."""
        return int(round(self.duration * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Frames of the feature map (350 by default)."""
        return self.num_samples // self.hop_length

    @property
    def shape(self) -> tuple[int, int, int]:
        """(1, n_mels, n_frames): the input shape the model is built for."""
        return (1, self.n_mels, self.n_frames)

    def to_dict(self) -> dict:
        """Plain JSON-ready values, saved in the model file."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        """The config a model file saved; unknown keys are refused rather than ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"FeatureConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


def _check_signal(signal) -> np.ndarray:
    """The signal as 1-D float32, or an AudioError: a bad array never reaches librosa."""
    x = np.asarray(signal)
    if x.ndim != 1:
        raise AudioError(f"signal: expected a 1-D mono array, got shape {x.shape}")
    if x.size == 0:
        raise AudioError("signal: empty audio")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise AudioError("signal: contains NaN or infinite samples")
    return x


def prepare(signal, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Trim leading/trailing silence (``trim_top_db`` below the peak) and, if configured,
    scale to a peak of 1. An all-silent signal is returned unchanged (no trimming)."""
    x = _check_signal(signal)
    peak = float(np.max(np.abs(x)))
    if peak == 0.0:
        return x.copy()
    start, end = spectral.loud_span(x, config.trim_top_db, config.trim_frame_length,
                                    config.trim_hop_length)
    if end > start:
        x = x[start:end]
    if config.peak_normalize:
        x = x / np.max(np.abs(x))
    return np.ascontiguousarray(x, dtype=np.float32)


def fit_length(signal, n: int, offset: int = 0) -> np.ndarray:
    """Centre ``signal`` in ``n`` samples: pad with zeros on both sides or crop both ends.

    ``offset`` moves the clip later (positive) or earlier (negative) by that many samples
    relative to the centred position (used for time-shift augmentation); the parts that move
    outside the window are cut off.
    """
    x = np.asarray(signal, dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    start = (n - x.size) // 2 + int(offset)  # position of x[0] in out (may be negative)
    src_lo = max(0, -start)
    src_hi = min(x.size, n - start)
    if src_hi > src_lo:
        out[start + src_lo:start + src_hi] = x[src_lo:src_hi]
    return out


def log_mel(fixed, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Log-mel map (1, n_mels, n_frames) in dB of a signal of exactly ``config.num_samples``.

    ``10 * log10(max(mel_power, log_floor))``; frames as documented on :class:`FeatureConfig`.
    """
    x = np.asarray(fixed, dtype=np.float32)
    if x.shape != (config.num_samples,):
        raise AudioError(f"signal: log_mel needs {config.num_samples} samples, got {x.shape}")
    half = (config.win_length - config.hop_length) // 2
    out = _mel_db(np.pad(x, (half, half)), config)
    assert out.shape == (config.n_mels, config.n_frames), out.shape
    return out[np.newaxis].astype(np.float32)


def _mel_db(x: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """(n_mels, frames) log-mel power in dB of ``x`` framed with ``center=False``."""
    mel = spectral.mel_power(x, config.sample_rate, config.win_length, config.hop_length,
                             config.window, config.power, config.n_mels, config.fmin,
                             config.fmax, config.mel_htk, config.mel_norm)
    return 10.0 * np.log10(np.maximum(mel, config.log_floor))


def stretched_log_mel(trimmed, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Log-mel map (1, n_mels, n_frames) in dB of a whole (trimmed) utterance of any length,
    stretched or squeezed in time onto ``config.n_frames`` frames.

    The utterance is padded by ``(win_length - hop_length) / 2`` samples on each side (and
    to at least one window), framed as in :func:`log_mel`, and each band is linearly
    interpolated from its ``F`` frames onto ``n_frames`` equally spaced points from the first
    frame to the last (see :class:`FeatureConfig`, "Time normalisation").
    """
    x = _check_signal(trimmed)
    half = (config.win_length - config.hop_length) // 2
    x = np.pad(x, (half, half))
    if x.size < config.win_length:
        x = np.pad(x, (0, config.win_length - x.size))
    db = _mel_db(x, config)
    n_in = db.shape[1]
    t = np.linspace(0.0, n_in - 1, config.n_frames)
    i0 = np.floor(t).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = t - i0
    out = db[:, i0] * (1.0 - w) + db[:, i1] * w
    assert out.shape == (config.n_mels, config.n_frames), out.shape
    return out[np.newaxis].astype(np.float32)


def normalize_bands(feature_map, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Apply ``config.normalize`` to a (1, n_mels, n_frames) map (unchanged for "none")."""
    x = np.asarray(feature_map, dtype=np.float32)
    if config.normalize == "none":
        return x
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    std = x64.std(axis=-1, keepdims=True)
    return ((x64 - mean) / (std + BAND_STD_FLOOR)).astype(np.float32)


def features(signal, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Log-mel features of a mono signal at ``config.sample_rate``: trim silence, centre and
    pad/crop to ``config.duration``, 40 log-mel bands at 25 ms / 10 ms -> (1, 40, 350) float32.
    With ``config.time_normalize`` the trimmed utterance is stretched over the 350 frames
    instead of padded (:func:`stretched_log_mel`).
    """
    if config.time_normalize:
        out = stretched_log_mel(prepare(signal, config), config)
    else:
        out = log_mel(fit_length(prepare(signal, config), config.num_samples), config)
    return normalize_bands(out, config)

"""Audio front end: decoding, resampling, trimming/padding and log-mel features.

Public API::

    audio.load(path, sample_rate=16000, max_duration=60.0, min_duration=0.1) -> float32 (n,)
    audio.features(signal, config=FeatureConfig()) -> float32 (1, n_mels, n_frames)
    audio.FeatureConfig        frozen dataclass of every feature parameter; to_dict()/from_dict()
    audio.prepare(signal, config)            trim silence (+ optional peak normalisation)
    audio.fit_length(signal, n, offset=0)    centre and pad with zeros / crop to n samples
    audio.log_mel(fixed, config)             log-mel map of an already fixed-length signal
    audio.stretched_log_mel(trimmed, config) log-mel map of a whole utterance, stretched in time
    audio.normalize_bands(map, config)       per-utterance band normalisation (config.normalize)

``features`` is ``log_mel(fit_length(prepare(signal), config.num_samples), config)``, or with
``config.time_normalize`` ``stretched_log_mel(prepare(signal), config)``, followed by
``normalize_bands``; the training code composes these itself to augment clips.

Every problem with a file or a signal raises :class:`mpc.errors.AudioError` whose message
names the file (or says "signal") and the problem. This package imports only numpy, librosa,
soundfile, the standard library and ``mpc.errors``.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from mpc.errors import AudioError

__all__ = [
    "AudioError",
    "FeatureConfig",
    "features",
    "fit_length",
    "load",
    "log_mel",
    "normalize_bands",
    "prepare",
    "stretched_log_mel",
]

DEFAULT_MAX_DURATION = 60.0
DEFAULT_MIN_DURATION = 0.1
#: Source sample rates accepted by `load` (Hz): below 4 kHz a file cannot carry speech (and
#: resampling would invent the signal), above 384 kHz (the highest common studio rate) a
#: 60 s clip would already hold 23 million frames per channel.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
#: Added to a band's standard deviation (dB) before dividing, for ``normalize="band"``: a
#: constant band (e.g. silence at the log floor) maps to 0 instead of dividing by zero.
BAND_STD_FLOOR = 1e-3


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

def _riff_truncation(path: Path, size: int) -> str | None:
    """For a RIFF/WAVE file, compare the declared ``data`` chunk size with the bytes present.

    libsndfile silently shortens a WAV whose header promises more data than the file holds;
    we want that reported. Returns a problem description or ``None``.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                break
            cid = chunk[:4]
            (csize,) = struct.unpack(endian + "I", chunk[4:])
            if cid == b"data":
                if csize in (0, 0xFFFFFFFF):  # unknown length (streamed WAV): nothing to check
                    return None
                available = size - (pos + 8)
                if csize > available:
                    return (f"truncated: the header declares {csize} bytes of audio data "
                            f"but only {available} are present")
                return None
            pos += 8 + csize + (csize & 1)
    return None


def _ogg_truncation(path: Path, size: int) -> str | None:
    """For an Ogg file, check that the last page carries the end-of-stream flag."""
    with open(path, "rb") as f:
        if f.read(4) != b"OggS":
            return None
        tail_len = min(size, 65536)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
    last = tail.rfind(b"OggS")
    if last < 0 or last + 6 > len(tail):
        return "truncated: no complete final Ogg page"
    if not tail[last + 5] & 0x04:
        return "truncated: the last Ogg page is not marked end-of-stream"
    return None


def load(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    max_duration: float = DEFAULT_MAX_DURATION,
    min_duration: float = DEFAULT_MIN_DURATION,
) -> np.ndarray:
    """Decode an audio file (WAV, FLAC, Ogg, anything libsndfile reads) to mono float32.

    Channels are averaged; the result is resampled with librosa (soxr) to ``sample_rate``.
    The declared length is checked against ``max_duration``/``min_duration`` (seconds)
    *before* decoding, so a file claiming an enormous length allocates nothing.

    Raises :class:`AudioError` naming the file for: a missing or unreadable file, a
    truncated file (WAV data chunk shorter than declared, Ogg without end-of-stream page,
    FLAC/other decoder errors or fewer frames than declared), empty audio, NaN/inf samples,
    a source rate outside ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``, and a clip longer than
    ``max_duration`` or shorter than ``min_duration``.
    """
    path = Path(path)
    name = str(path)
    if sample_rate <= 0:
        raise AudioError(f"{name}: target sample rate must be positive, got {sample_rate}")
    if not path.exists():
        raise AudioError(f"{name}: file not found")
    if not path.is_file():
        raise AudioError(f"{name}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile reports bad headers as RuntimeError subclasses
        raise AudioError(f"{name}: unreadable audio file ({exc})") from exc
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(f"{name}: invalid header (rate {info.samplerate}, "
                         f"{info.channels} channels)")
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {info.samplerate} Hz is outside the supported "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")

    problem = _riff_truncation(path, size) or _ogg_truncation(path, size)
    if problem:
        raise AudioError(f"{name}: {problem}")

    declared = int(info.frames)
    if declared <= 0:
        raise AudioError(f"{name}: empty audio (0 frames)")
    duration = declared / info.samplerate
    if duration > max_duration:
        raise AudioError(f"{name}: clip too long: {duration:.2f} s declared, "
                         f"maximum is {max_duration:g} s")
    if duration < min_duration:
        raise AudioError(f"{name}: clip too short: {duration:.3f} s, "
                         f"minimum is {min_duration:g} s")

    try:
        data, rate = sf.read(str(path), frames=declared, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{name}: cannot decode audio, file truncated or corrupt ({exc})"
                         ) from exc
    if data.shape[0] == 0:
        raise AudioError(f"{name}: empty audio (no frames decoded)")
    if data.shape[0] < declared:
        raise AudioError(f"{name}: truncated: {data.shape[0]} frames decoded, "
                         f"{declared} declared")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")

    mono = data.mean(axis=1, dtype=np.float64).astype(np.float32)
    if rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------

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
        return (1, self.n_mels, self.n_frames)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"FeatureConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


def _check_signal(signal) -> np.ndarray:
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
    _, (start, end) = librosa.effects.trim(
        x, top_db=config.trim_top_db, frame_length=config.trim_frame_length,
        hop_length=config.trim_hop_length)
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
    mel = librosa.feature.melspectrogram(
        y=x, sr=config.sample_rate, n_fft=config.win_length,
        hop_length=config.hop_length, win_length=config.win_length, window=config.window,
        center=False, power=config.power, n_mels=config.n_mels, fmin=config.fmin,
        fmax=config.fmax, htk=config.mel_htk, norm=config.mel_norm)
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

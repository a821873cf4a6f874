"""Reading audio files: the checks a hostile or broken file must pass before it is decoded.

Every problem raises :class:`audio.errors.AudioError` naming the file. The declared length
and sample rate are checked from the header, before decoding, so a file claiming an enormous
length allocates nothing; the limits are documented in ``mpc/limits.py`` and SECURITY.md.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audio.errors import AudioError

__all__ = ["DEFAULT_MAX_DURATION", "DEFAULT_MIN_DURATION", "MAX_SAMPLE_RATE", "MIN_SAMPLE_RATE",
           "load"]

DEFAULT_MAX_DURATION = 60.0
DEFAULT_MIN_DURATION = 0.1
#: Source sample rates accepted by `load` (Hz): below 4 kHz a file cannot carry speech (and
#: resampling would invent the signal), above 384 kHz (the highest common studio rate) a
#: 60 s clip would already hold 23 million frames per channel.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000


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

    Channels are averaged; the result is resampled (soxr, as librosa does) to ``sample_rate``.
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
        mono = resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(signal: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`signal` at `target` Hz: what `librosa.resample` returns with its default soxr_hq
    (the same samples, padded to ceil(n * target / rate)), without importing librosa's
    modules, which costs a fresh process about 1.7 s."""
    out = soxr.resample(signal, rate, target, quality="soxr_hq").astype(np.float32)
    length = int(np.ceil(signal.shape[-1] * float(target) / rate))
    if out.shape[-1] < length:
        out = np.pad(out, (0, length - out.shape[-1]))
    return out[:length]

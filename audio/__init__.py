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

The code lives in :mod:`audio.loading` (files) and :mod:`audio.features` (signals); this
module re-exports both. The function ``audio.features`` hides the submodule of the same
name as an attribute of the package, so reach the submodule with
``from audio.features import ...`` (or ``sys.modules``), not ``audio.features.X``; patch a
loading or feature helper in its submodule, where the code looks it up.

Every problem with a file or a signal raises :class:`audio.errors.AudioError` whose message
names the file (or says "signal") and the problem. This package imports only numpy, librosa,
soundfile, the standard library and ``mpc.errors``.
"""

from __future__ import annotations

from audio.errors import AudioError
from audio.features import (
    BAND_STD_FLOOR,
    FeatureConfig,
    features,
    fit_length,
    log_mel,
    normalize_bands,
    prepare,
    stretched_log_mel,
)
from audio.loading import (
    DEFAULT_MAX_DURATION,
    DEFAULT_MIN_DURATION,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    load,
)

__all__ = [
    "AudioError",
    "BAND_STD_FLOOR",
    "DEFAULT_MAX_DURATION",
    "DEFAULT_MIN_DURATION",
    "FeatureConfig",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "features",
    "fit_length",
    "load",
    "log_mel",
    "normalize_bands",
    "prepare",
    "stretched_log_mel",
]

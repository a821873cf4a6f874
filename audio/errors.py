"""Errors of the audio layer: unusable audio, leaking splits, failed dataset downloads.

They subclass :class:`mpc.errors.SottovoceError`, so a caller catches every framework error
with one ``except``, and also the built-in type that fits (``ValueError`` for bad input,
``RuntimeError`` for a failed download), which callers may catch instead.
"""

from __future__ import annotations

from mpc.errors import SottovoceError

__all__ = ["AudioError", "FetchError", "SplitLeakError"]


class AudioError(SottovoceError, ValueError):
    """An audio file or signal is unusable; the message names the file and the problem."""


class SplitLeakError(SottovoceError, ValueError):
    """The same speaker or the same audio is on both sides of a train/test split."""


class FetchError(SottovoceError, RuntimeError):
    """The voice-pack package could not be downloaded or unpacked."""

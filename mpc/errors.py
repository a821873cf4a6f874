"""Errors of the mpc layer and the base class of every layer's errors.

Callers tell failures apart by type; each package above keeps its own errors in its own
``errors`` module (``audio.errors``, ``nn.errors``), all subclasses of :class:`SottovoceError`.
"""

from __future__ import annotations


class SottovoceError(Exception):
    """Base class of every error this framework raises on purpose."""


class EncodingError(SottovoceError, ValueError):
    """A value cannot be represented (NaN, infinity, or outside the fixed-point range)."""


class ProtocolError(SottovoceError):
    """A peer sent something the protocol does not allow (bad frame, wrong shape or dtype)."""


class LimitExceeded(ProtocolError):
    """A peer sent more than the role lets it have buffered at this step (`Channel.limit`)."""


class PeerTimeout(SottovoceError, TimeoutError):
    """A peer sent nothing within the configured timeout."""


class PeerLost(SottovoceError, ConnectionError):
    """A peer's connection closed or broke."""


class PeerAborted(PeerLost):
    """A peer stopped and said why (an abort frame): the reason names the root cause, e.g.
    the party whose link broke first, so every endpoint learns who failed, not merely who
    closed its link last."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message

    def __reduce__(self):  # pickled between processes with its reason
        return type(self), (str(self), self.reason)


class PreprocessingError(SottovoceError):
    """Preprocessing material is missing, mismatched, or would be used a second time."""


class CheatingDetected(SottovoceError):
    """An active-security check failed; no output is revealed."""


class ConfigError(SottovoceError, ValueError):
    """A configuration, cluster or model file is invalid."""


class AuthenticationError(SottovoceError):
    """A peer's TLS certificate is not from the project CA or names another party."""


class PartyFailed(SottovoceError):
    """A party's role raised; the message names the party and carries its error."""

    def __init__(self, party_id: int, error: BaseException | str) -> None:
        self.party_id = party_id
        self.error = error
        super().__init__(f"party {party_id} failed: {error}")

    def __reduce__(self) -> tuple:  # two-argument __init__: pickle by its arguments
        return (PartyFailed, (self.party_id, self.error))

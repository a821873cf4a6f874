"""Error types shared by every layer, so callers can tell failures apart by type."""


class SottovoceError(Exception):
    """Base class of every error this framework raises on purpose."""


class EncodingError(SottovoceError, ValueError):
    """A value cannot be represented (NaN, infinity, or outside the fixed-point range)."""


class ProtocolError(SottovoceError):
    """A peer sent something the protocol does not allow (bad frame, wrong shape or dtype)."""


class PeerTimeout(SottovoceError, TimeoutError):
    """A peer sent nothing within the configured timeout."""


class PeerLost(SottovoceError, ConnectionError):
    """A peer's connection closed or broke."""


class PreprocessingError(SottovoceError):
    """Preprocessing material is missing, mismatched, or would be used a second time."""


class CheatingDetected(SottovoceError):
    """An active-security check failed; no output is revealed."""


class ConfigError(SottovoceError, ValueError):
    """A configuration, cluster or model file is invalid."""


class AudioError(SottovoceError, ValueError):
    """An audio file or signal is unusable; the message names the file and the problem."""

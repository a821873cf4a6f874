"""Errors of the nn layer, kept apart from the layer code so callers import them cheaply."""

from __future__ import annotations

from mpc.errors import ConfigError, SottovoceError

__all__ = ["ModelDescriptionError", "ModelFileError", "ModelImportError"]


class ModelImportError(SottovoceError, ValueError):
    """The model cannot be run securely as given; the message names the module."""


class ModelDescriptionError(ConfigError):
    """A model description (JSON from the model owner) is malformed or exceeds a limit.

    It comes from a peer, so it is refused before anything is sized from it; `layer` (None
    for a top-level field) and `field` say where, and the message names both and the value.
    """

    def __init__(self, message: str, layer: int | None = None, field: str | None = None
                 ) -> None:
        self.layer = layer
        self.field = field
        super().__init__(message)

    def __reduce__(self) -> tuple:  # keyword attributes: pickle by all the arguments
        return (ModelDescriptionError, (str(self), self.layer, self.field))


class ModelFileError(ConfigError):
    """A model file cannot be read or written as a model (`nn.modelfile`); the message
    names the file and the problem."""

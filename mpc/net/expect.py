"""What a receive must deliver: a dtype and a shape, stated by the receiving code.

Every array a peer sends is compared with the receiver's `Expect` before protocol code
touches it (see `Channel.recv` and `Channel.exchange`), so a peer that sends the wrong dtype
or shape is one `ProtocolError` naming it and the step, never a numpy error later on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _shape(shape: int | Sequence[int | None]) -> tuple[int | None, ...]:
    dims = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    return tuple(None if d is None else int(d) for d in dims)


@dataclass(frozen=True)
class Expect:
    """A dtype and a shape; a dimension given as None takes any length."""

    dtype: np.dtype
    shape: tuple[int | None, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", _shape(self.shape))

    @classmethod
    def like(cls, array: np.ndarray) -> Expect:
        """The dtype and shape of `array` (typically what this party sent)."""
        array = np.asarray(array)
        return cls(array.dtype, array.shape)

    @classmethod
    def uint64(cls, shape: int | Sequence[int | None]) -> Expect:
        """Ring elements (uint64) of `shape`; an int is a flat length."""
        return cls(np.uint64, shape)

    @classmethod
    def uint8(cls, shape: int | Sequence[int | None]) -> Expect:
        """Bytes (uint8) of `shape`; an int is a flat length."""
        return cls(np.uint8, shape)

    def matches(self, array: np.ndarray) -> bool:
        return (array.dtype == self.dtype and array.ndim == len(self.shape)
                and all(want is None or got == want
                        for got, want in zip(array.shape, self.shape, strict=True)))

    def __str__(self) -> str:
        dims = tuple("?" if d is None else d for d in self.shape)
        return f"{self.dtype}({', '.join(map(str, dims))}{',' if len(dims) == 1 else ''})"


#: Raw bytes of any length (control messages, documents, keys).
BYTES = Expect.uint8((None,))


def describe(array: np.ndarray) -> str:
    """An array's dtype and shape as error messages show them (never its contents)."""
    return f"{array.dtype}{array.shape}"

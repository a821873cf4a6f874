"""Fixed-point encoding of real numbers into Z_2^64.

A real x becomes round(x * 2^f) in two's complement mod 2^64. The representable magnitude is
bounded by ``int_bits`` so that values use at most frac + int + sign <= 62 bits: the protocols
need the remaining headroom (probabilistic truncation adds 2^l and needs l <= k - 2, products
carry 2f fractional bits before truncation). A value that does not fit is an error, never a
silent wrap-around.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mpc.errors import EncodingError
from mpc.ring import arith_rshift64

__all__ = ["FixedPoint", "MAX_VALUE_BITS", "truncate_exact"]

#: Upper bound on frac_bits + int_bits + 1 (sign), leaving two bits of Z_2^64 as headroom.
MAX_VALUE_BITS = 62


@dataclass(frozen=True)
class FixedPoint:
    """Fixed point with ``frac_bits`` fractional and ``int_bits`` integer bits plus a sign.

    Encodable values are the finite x whose rounded encoding round(x * 2^f) has magnitude at
    most 2^(int_bits + frac_bits) - 1, i.e. |x| <= :attr:`max_abs` = 2^int_bits - 2^-frac_bits
    after rounding; in particular every |x| >= 2^int_bits is rejected.
    """

    frac_bits: int = 16
    int_bits: int = 31

    def __post_init__(self) -> None:
        for name in ("frac_bits", "int_bits"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ValueError(f"FixedPoint.{name} must be an int, got {value!r}")
        if self.frac_bits < 0:
            raise ValueError(f"FixedPoint.frac_bits must be >= 0, got {self.frac_bits}")
        if self.int_bits < 1:
            raise ValueError(f"FixedPoint.int_bits must be >= 1, got {self.int_bits}")
        total = self.frac_bits + self.int_bits + 1
        if total > MAX_VALUE_BITS:
            raise ValueError(
                f"FixedPoint(frac_bits={self.frac_bits}, int_bits={self.int_bits}) needs "
                f"{total} bits with the sign; at most {MAX_VALUE_BITS} are allowed so that "
                "protocols keep headroom in Z_2^64"
            )

    @property
    def scale(self) -> int:
        """2^frac_bits, the factor between a real value and its encoding."""
        return 1 << self.frac_bits

    @property
    def max_abs(self) -> float:
        """Largest encodable magnitude, 2^int_bits - 2^-frac_bits."""
        return float(self._limit) / self.scale

    @property
    def _limit(self) -> int:
        """Largest allowed magnitude of an encoded integer."""
        return (1 << (self.int_bits + self.frac_bits)) - 1

    def encode(self, x: Any) -> np.ndarray:
        """round(x * 2^f) (to nearest, ties to even) in two's complement, as uint64.

        Raises EncodingError naming the first offending element (flat and multi-index), its
        value and the allowed range if any element is NaN, infinite or too large.
        """
        arr = np.asarray(x, dtype=np.float64)
        scaled = np.rint(arr * float(self.scale))
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(scaled) | (np.abs(scaled) > float(self._limit))
        if bad.any():
            flat = int(np.flatnonzero(bad)[0])
            index = tuple(int(i) for i in np.unravel_index(flat, arr.shape))
            value = float(arr.reshape(-1)[flat])
            raise EncodingError(
                f"cannot encode {value!r} at flat index {flat} (index {index}): "
                f"FixedPoint(frac_bits={self.frac_bits}, int_bits={self.int_bits}) accepts "
                f"finite values with |x| <= {self.max_abs!r} (below 2^{self.int_bits})"
            )
        return scaled.astype(np.int64).view(np.uint64)

    def decode(self, a: np.ndarray) -> np.ndarray:
        """The signed real values of encodings (uint64, two's complement) as float64."""
        arr = np.asarray(a)
        if arr.dtype != np.uint64:
            raise TypeError(f"decode expects a uint64 array, got dtype {arr.dtype}")
        return arr.view(np.int64).astype(np.float64) / float(self.scale)


def truncate_exact(a: np.ndarray, f: int) -> np.ndarray:
    """floor(a / 2^f) for a read as signed, in Z_2^64: the exact truncation that the plaintext
    emulator uses and the probabilistic protocol approximates (to within one unit)."""
    if int(f) < 0:
        raise ValueError(f"truncation by a negative number of bits: {f}")
    return arith_rshift64(a, int(f))

"""The `Protocol` interface: the few primitives each scheme implements.

A party's share of a tensor is a uint64 array of shape (components, *shape): one component
for additive sharing, two for 3-party replicated sharing. Everything structural (reshape,
indexing, sums) and everything linear with public values works on each component alike, so
`SecretTensor` does it once for every scheme; only the primitives below differ.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import numpy as np

from protocols.ops import Conv2d, MatMul, Mul
from protocols.preprocessing.correlations import Request

BilinearOp = Mul | MatMul | Conv2d


def as_ring(value: object) -> np.ndarray:
    """A public value as ring elements: ints wrap mod 2^64, uint64/int64 arrays are viewed."""
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint64:
            return value
        if value.dtype.kind in "iub":
            return value.astype(np.int64).astype(np.uint64)
        raise TypeError(f"public operand of dtype {value.dtype}: encode floats with "
                        "FixedPoint first")
    if isinstance(value, int | np.integer):
        return np.array(int(value) % (1 << 64), dtype=np.uint64)
    raise TypeError(f"cannot use {type(value).__name__} as a public ring value")


class Protocol(ABC):
    """One party's side of a secret-sharing scheme."""

    name: str = "abstract"
    components: int = 1
    needs_dealer: bool = False

    party_id: int
    n_parties: int

    # -- preprocessing -------------------------------------------------------------------
    def preprocess(self, plan: list[Request]) -> None:  # noqa: B027 - optional hook
        """Offline phase: obtain the material `plan` lists (default: none needed)."""

    # -- local linear arithmetic on shares (mod 2^64 here; 128-bit schemes override) --------
    def add(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x + y

    def sub(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x - y

    def neg(self, x: np.ndarray) -> np.ndarray:
        return np.negative(x)

    def mul_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Shares of x * value for public ring elements `value` (broadcast over x)."""
        return x * value

    def public_bilinear(self, x: np.ndarray, value: np.ndarray, op: BilinearOp,
                        public_left: bool) -> np.ndarray:
        """Shares of op(value, x) or op(x, value) for a public `value`: local, per component."""
        if public_left:
            return np.stack([op(value, c) for c in x])
        return np.stack([op(c, value) for c in x])

    def sum(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        """Shares of the sum over value axes `axes` (0-based, excluding the component axis)."""
        return x.sum(axis=tuple(a + 1 for a in axes), keepdims=keepdims, dtype=np.uint64)

    def fix_operand(self, x: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Declare `x` (e.g. model weights) an operand reused by many products: schemes that
        can mask it once for all of them (Beaver with a fixed mask) do so here."""

    # -- primitives ----------------------------------------------------------------------
    @abstractmethod
    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        """Share `value` (ring elements, known to `owner` only) among the parties."""

    @abstractmethod
    def reveal(self, x: np.ndarray, to: Iterable[int]) -> np.ndarray | None:
        """Open `x` to the parties in `to` only; the others get None."""

    @abstractmethod
    def add_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Shares of x + value for a public `value`."""

    @abstractmethod
    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        """Shares of op(x, y) for secret x and y (one round)."""

    @abstractmethod
    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        """Shares of x / 2^frac_bits, floor or one more (|x| < 2^62)."""

    def bilinear_trunc(self, x: np.ndarray, y: np.ndarray, op: BilinearOp,
                       bias: np.ndarray | None, frac_bits: int) -> np.ndarray:
        """Shares of (op(x, y) + bias) / 2^frac_bits: a linear layer with its one truncation.
        Schemes that can fuse the product's round with the truncation's override this."""
        z = self.bilinear(x, y, op)
        return self.trunc(z if bias is None else z + bias, frac_bits)

    @abstractmethod
    def ltz(self, x: np.ndarray) -> np.ndarray:
        """Shares of the bit [x < 0] as a ring element."""

    @abstractmethod
    def relu(self, x: np.ndarray) -> np.ndarray:
        """Shares of max(x, 0)."""

    # -- helpers -------------------------------------------------------------------------
    def plays(self, party: int) -> bool:
        """Whether this process holds `party`'s private inputs (the emulator plays all)."""
        return self.party_id == party

    def check_reveal_targets(self, to: Iterable[int]) -> tuple[int, ...]:
        targets = tuple(sorted(set(to)))
        if not targets:
            raise ValueError("reveal to nobody: name the parties that may learn the value")
        bad = [t for t in targets if not 0 <= t < self.n_parties]
        if bad:
            raise ValueError(f"cannot reveal to party {bad[0]}: "
                             f"parties are 0..{self.n_parties - 1}")
        return targets

    def check_owner(self, owner: int, value: np.ndarray | None, shape: tuple) -> np.ndarray | None:
        if not 0 <= owner < self.n_parties:
            raise ValueError(f"input owner {owner} is not a party (0..{self.n_parties - 1})")
        if self.party_id == owner:
            if value is None:
                raise ValueError(f"party {owner} owns this input but passed no value")
            value = as_ring(np.asarray(value))
            if value.shape != tuple(shape):
                raise ValueError(f"input of shape {value.shape}, declared {tuple(shape)}")
            return value
        return None


class MaskedPrimitives:
    """trunc, ltz and relu for schemes that run them as masked sub-protocols
    (`protocols.blocks.masked`): the scheme supplies `_masked(kind, x, **params)`."""

    def _masked(self, kind: str, x: np.ndarray, **params: int) -> np.ndarray:
        raise NotImplementedError

    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        return self._masked("trunc", x, frac_bits=frac_bits)

    def ltz(self, x: np.ndarray) -> np.ndarray:
        return self._masked("ltz", x)

    def relu(self, x: np.ndarray) -> np.ndarray:
        return self._masked("relu", x)

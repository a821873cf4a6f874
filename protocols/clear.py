"""Protocols without secrets: the plaintext emulator and the planner.

`Clear` runs the same ring arithmetic as the secure schemes in the clear, one party, with
exact (floor) truncation: it is the reference the secure results are compared against.
`Planner` runs a program on shapes only and records the preprocessing it will need, so the
dealer can make it all before the online phase.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from protocols.base import BilinearOp, Protocol, as_ring
from protocols.preprocessing.correlations import FULL_BITS, Request

MSB = np.uint64(63)


class Clear(Protocol):
    """One party holds every value; each primitive is its plaintext definition."""

    name = "clear"
    components = 1

    def __init__(self, n_parties: int = 1) -> None:
        self.party_id = 0
        self.n_parties = n_parties

    def plays(self, party: int) -> bool:
        return True

    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        if value is None:
            raise ValueError("the clear protocol needs every input's value")
        value = as_ring(np.asarray(value))
        if value.shape != tuple(shape):
            raise ValueError(f"input of shape {value.shape}, declared {tuple(shape)}")
        return value[None].copy()

    def reveal(self, x: np.ndarray, to: Iterable[int]) -> np.ndarray | None:
        self.check_reveal_targets(to)
        return x[0].copy()

    def add_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        return x + value

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        return op(x[0], y[0])[None]

    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        return (x.view(np.int64) >> np.int64(frac_bits)).view(np.uint64)

    def ltz(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        return x >> MSB

    def relu(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        return np.where(x >> MSB, np.uint64(0), x)


class Planner(Clear):
    """Records what a program needs; computes on zeros, so no value is ever used."""

    name = "planner"

    def __init__(self, n_parties: int = 1) -> None:
        super().__init__(n_parties)
        self.plan: list[Request] = []

    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros((1, *shape), dtype=np.uint64)

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        self.plan.append(Request("triple", x.shape[1:], y.shape[1:], op=op))
        return np.zeros((1, *op.out_shape(x.shape[1:], y.shape[1:])), dtype=np.uint64)

    def input_external(self, source: int, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros((1, *shape), dtype=np.uint64)

    def reveal_external(self, x: np.ndarray, target: int) -> None:
        """Nothing to plan: the passive method takes no material."""

    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        self.plan.append(Request("trunc", x.shape[1:], frac_bits=frac_bits))
        return x

    def ltz(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        self.plan.append(Request("ltz", x.shape[1:], bits=bits))
        return x

    def relu(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        self.plan.append(Request("relu", x.shape[1:], bits=bits))
        return x

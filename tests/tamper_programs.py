"""The small program the tamper tests alter message by message (input, product, truncation,
ReLU, reveal to party 0), its inputs, and the output log that shows nobody got a value."""

from __future__ import annotations

import numpy as np
from protocol_helpers import secret

from protocols.base import Protocol
from protocols.clear import Clear

FRAC = 16
X = np.array([3 << FRAC, -(5 << FRAC), 1 << 10, -7, 0], dtype=np.int64)
Y = np.array([-(2 << FRAC), 3 << FRAC, 1 << FRAC, 9 << FRAC, 4], dtype=np.int64)


class RecordsOutputs:
    """A program that logs which parties got an output; the planner's dry run (a deep copy)
    shares the log."""

    def __init__(self) -> None:
        self.outputs: list[int] = []

    def __deepcopy__(self, memo: dict) -> RecordsOutputs:
        return self


class Program(RecordsOutputs):
    """input, mul, trunc, relu, reveal to party 0; records which parties got an output."""

    def __call__(self, p: Protocol) -> np.ndarray | None:
        x = secret(p, X, 0)
        y = secret(p, Y, 1)
        z = (x * y).trunc(FRAC).relu()
        out = z.reveal(0)
        if out is not None and not isinstance(p, Clear):
            self.outputs.append(p.party_id)
        return out

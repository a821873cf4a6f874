"""Preprocessing material held by one party: consumed in plan order, each item once.

The online phase asks for exactly what the plan listed, in the same order; asking for
anything else, or for more, is an error rather than a silent reuse of material.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from mpc.errors import PreprocessingError
from mpc.net.channel import Channel
from mpc.net.expect import Expect
from mpc.prg import PRG
from protocols.preprocessing.correlations import (
    Request,
    correction_words,
    deal,
    expand,
    split_corrections,
)


class MaterialStore:
    """A queue of (request, material); `take` hands each item out once."""

    def __init__(self) -> None:
        self._items: deque[tuple[Request, dict[str, np.ndarray]]] = deque()
        self.used = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, request: Request, material: dict[str, np.ndarray]) -> None:
        self._items.append((request, material))

    def take(self, request: Request) -> dict[str, np.ndarray]:
        if not self._items:
            raise PreprocessingError(
                f"no preprocessing material left for {request.kind} {request.shape} "
                f"(item {self.used + 1}); each item is used once, so the computation needs "
                "more than was planned")
        planned, material = self._items[0]
        if planned != request:
            raise PreprocessingError(
                f"item {self.used + 1} was planned as {planned.label} but the computation "
                f"asks for {request.label}: plan and program differ")
        self._items.popleft()
        self.used += 1
        return material


def serve(plan: list[Request], prgs: list[PRG], channel: Channel, last_party: int) -> int:
    """Dealer side of the offline phase: one message of corrections to the last party.

    Returns the number of words sent."""
    masks: dict[int, np.ndarray] = {}  # fixed-operand masks, reused by later triples
    parts = [c.reshape(-1) for request in plan for c in deal(request, prgs, masks)]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    with channel.stage("preprocessing"):
        channel.send(last_party, flat)
    return flat.size


def receive(plan: list[Request], prg: PRG, is_last: bool, channel: Channel,
            dealer: int) -> MaterialStore:
    """Party side of the offline phase: expand own shares, take corrections if last."""
    store = MaterialStore()
    if is_last:
        expected = sum(correction_words(r) for r in plan)
        with channel.stage("preprocessing"):
            flat = channel.recv(dealer, expect=Expect.uint64(expected),
                                what="as the plan's corrections")
        for request, arrays in zip(plan, split_corrections(plan, flat), strict=True):
            store.add(request, expand(request, prg, True, _supplier(iter(arrays))))
    else:
        for request in plan:
            store.add(request, expand(request, prg, False, _never))
    return store


def _supplier(arrays: Iterator[np.ndarray]) -> Callable[[object], np.ndarray]:
    return lambda field: next(arrays)


def _never(field: object) -> np.ndarray:
    raise AssertionError("only the last party receives corrections")

"""Shared helpers of the protocol tests (tier 2): schemes, inputs, ring views, round counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from protocols.base import Protocol
from protocols.clear import Clear
from protocols.run import PartyReport, run
from protocols.tensor import SecretTensor

#: Every (scheme, party count) the tier-2 bodies run on.
SCHEME_PARTIES = [("additive", 2), ("additive", 3), ("additive", 4), ("replicated", 3)]
SCHEME_IDS = [f"{s}-{n}" for s, n in SCHEME_PARTIES]

#: Parametrize one test body over every scheme and party count.
every_scheme = pytest.mark.parametrize(("scheme", "n_parties"), SCHEME_PARTIES, ids=SCHEME_IDS)

#: Largest magnitude the protocols promise for truncation and the masked sub-protocols.
VALUE_MAX = (1 << 62) - 1


def u64(values: Any) -> np.ndarray:
    """Signed integers (Python ints or int64 arrays) as ring elements."""
    array = np.asarray(values)
    if array.dtype == np.uint64:
        return array
    if array.dtype == object:
        return np.array([int(v) % (1 << 64) for v in array.reshape(-1)],
                        dtype=np.uint64).reshape(array.shape)
    return array.astype(np.int64).astype(np.uint64)


def i64(values: np.ndarray) -> np.ndarray:
    """Ring elements read as two's complement signed integers."""
    return np.asarray(values, dtype=np.uint64).view(np.int64)


def secret(protocol: Protocol, value: np.ndarray, owner: int) -> SecretTensor:
    """Input `value` owned by `owner`; other parties pass only the shape. The clear emulator
    (and the planner) stand in for every party, so they always get the value."""
    value = u64(value)
    gives = isinstance(protocol, Clear) or protocol.party_id == owner
    return SecretTensor.input(protocol, value if gives else None, owner % protocol.n_parties,
                              value.shape)


def reveal_all(x: SecretTensor) -> np.ndarray:
    """Open to every party (each party's report then carries the value)."""
    return x.reveal(range(x.protocol.n_parties))


def run_secure(scheme: str, n_parties: int, program: Callable[[Protocol], Any]
               ) -> list[PartyReport]:
    """`program` under a scheme over the in-process transport: compute parties' reports."""
    return run(scheme, program, n_parties=n_parties, transport="threads")[:n_parties]


def run_clear(program: Callable[[Protocol], Any], n_parties: int) -> Any:
    """The same program on the plaintext emulator (exact, floor truncation)."""
    return program(Clear(n_parties))


def busiest_rounds(reports: list[PartyReport]) -> int:
    """Online rounds of the compute party that spent the most."""
    return max(r.online.rounds for r in reports)
